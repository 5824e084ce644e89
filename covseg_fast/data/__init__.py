"""Datasets (2-D slice folders, labelled CT volumes), patient-level splits, transforms, collate."""
from .collate import collate_slices
from .slices import DataError, SliceDataset
from .splits import fold_parts, load_split, make_split, save_split
from .transforms import (MULTISCALE_RATES, Compose, RandomFlip, RandomRotate90, RandomRotation, Resize, infnet_resize,
                         msa_unet_resize, multiscale_size, multiscale_sizes, rescale_batch, resize_item)
from .volumes import (DEFAULT_WINDOW, VolumeCase, VolumeSliceDataset, axial_slice, find_cases, load_canonical,
                      window_hu)

__all__ = ["collate_slices", "DataError", "SliceDataset", "fold_parts", "load_split", "make_split", "save_split",
           "MULTISCALE_RATES", "Compose", "RandomFlip", "RandomRotate90", "RandomRotation", "Resize",
           "infnet_resize", "msa_unet_resize", "multiscale_size", "multiscale_sizes", "rescale_batch", "resize_item",
           "DEFAULT_WINDOW", "VolumeCase", "VolumeSliceDataset", "axial_slice", "find_cases", "load_canonical",
           "window_hu"]
