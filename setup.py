"""Builds covseg_fast._C from csrc/ (see README "Building").

- C++ CPU sources (csrc/ops/*.cpp) always;
- CUDA sources (csrc/ops/cuda/*.cu) when torch has CUDA and nvcc is found, or FORCE_CUDA=1;
- COVSEG_NO_EXT=1: pure-Python install, the PyTorch references serve;
- TORCH_CUDA_ARCH_LIST is honoured by torch.utils.cpp_extension (never set here).
The resolved configuration is printed and written to covseg_fast/_build_config.json.
"""
import glob
import json
import os
import shutil

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def resolve_config() -> dict:
    config = {"no_ext": os.environ.get("COVSEG_NO_EXT") == "1", "cuda": False}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        config.update(no_ext=True, reason="torch is not importable at build time (use --no-build-isolation)")
        return config
    config["torch"] = torch.__version__
    config["torch_cuda"] = torch.version.cuda
    nvcc = shutil.which("nvcc") or (
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc") if cpp_extension.CUDA_HOME else None
    )
    config["nvcc"] = nvcc
    force = os.environ.get("FORCE_CUDA") == "1"
    config["cuda"] = not config["no_ext"] and (force or (torch.version.cuda is not None and nvcc is not None))
    config["force_cuda"] = force
    config["cuda_arch_list"] = os.environ.get("TORCH_CUDA_ARCH_LIST")
    return config


def extensions(config: dict):
    if config["no_ext"]:
        return [], {}
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/ops/*.cpp"))
    cxx = ["-O3", "-std=c++17"]
    if config["cuda"]:
        sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
        ext = cpp_extension.CUDAExtension(
            "covseg_fast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]}
        )
    else:
        ext = cpp_extension.CppExtension("covseg_fast._C", sources, extra_compile_args={"cxx": cxx})
    # The library registers ops through TORCH_LIBRARY and is loaded with
    # torch.ops.load_library, so it needs no Python module init.
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


config = resolve_config()
print("covseg_fast build configuration:", json.dumps(config, indent=1))
with open(os.path.join(HERE, "covseg_fast", "_build_config.json"), "w") as fh:
    json.dump(config, fh, indent=1)
ext_modules, cmdclass = extensions(config)
setup(ext_modules=ext_modules, cmdclass=cmdclass)
