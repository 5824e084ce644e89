"""``OUTPUT/index.html``: the batch as one page to look at, written with the other batch reports (atomically).

One self-contained file: inline style and script, no network and nothing external; the thumbnails are the
cases' own overlay PNGs beside it (relative links, so the folder can be moved or served as is). A table of
cases (overlay, case, status, burden, volumes, warnings, links to every output) that sorts by any column
(click a header, or open ``index.html#sort=burden_pct`` / ``#sort=-burden_pct`` for descending), and the
failures with their reasons. Every text is escaped: case ids, paths and warnings come from users' file names.
"""
from __future__ import annotations

import html
import urllib.parse
from typing import Any

from .montage import DISCLAIMER
from .report import PAGE_MARK  # marks a page screen wrote (written_by_screen)
COLUMNS = (("case_id", "case", "text"), ("status", "status", "text"), ("burden_pct", "burden %", "num"),
           ("infected_ml", "infected ml", "num"), ("lung_ml", "lung ml", "num"), ("warnings", "warnings", "text"))
STATUS_ORDER = {"ok": 0, "warning": 1, "failed": 2}

STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th[data-key]{cursor:pointer;background:#f3f3f3}th[data-key]:hover{background:#e4e4e4}td.num{text-align:right}
.ok{color:#060}.warning{color:#a60}.failed{color:#b00}img{width:160px;height:auto;display:block}
.note{background:#fff6d5;padding:6px 10px;border:1px solid #e5d48a}"""

SCRIPT = """(function(){
var t=document.getElementById('cases'),b=t.tBodies[0];
function key(r,k,num){var v=r.querySelector('td[data-col="'+k+'"]').getAttribute('data-value');
return num?(v===''?Infinity:parseFloat(v)):v.toLowerCase();}
function sort(k,desc){var h=t.querySelector('th[data-key="'+k+'"]');if(!h)return;var num=h.dataset.type==='num';
var rows=Array.prototype.slice.call(b.rows);rows.sort(function(x,y){var a=key(x,k,num),c=key(y,k,num);
var d=a<c?-1:a>c?1:0;return desc?-d:d;});rows.forEach(function(r){b.appendChild(r);});
t.dataset.sorted=(desc?'-':'')+k;}
t.querySelectorAll('th[data-key]').forEach(function(h){h.addEventListener('click',function(){
var k=h.dataset.key;sort(k,t.dataset.sorted===k);});});
var m=/sort=(-?)(\\w+)/.exec(location.hash);if(m)sort(m[2],m[1]==='-');})();"""


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _link(name: str, text: str) -> str:
    return f'<a href="{_e(urllib.parse.quote(name))}">{_e(text)}</a>'


def _fmt(v: Any) -> str:
    return "" if v is None or v == "" else f"{float(v):.2f}"


def _row(r: dict) -> str:
    outputs = r.get("outputs", {}) or {}
    status = str(r.get("status", ""))
    warnings = r.get("warnings") or []
    cells = {
        "case_id": (_e(r.get("case_id")), r.get("case_id")),
        "status": (f'<span class="{_e(status)}">{_e(status)}</span>' + (" (resumed)" if r.get("resumed") else ""),
                   STATUS_ORDER.get(status, 3)),
        "burden_pct": (_fmt(r.get("burden_pct")), r.get("burden_pct")),
        "infected_ml": (_fmt(r.get("infected_ml")), r.get("infected_ml")),
        "lung_ml": (_fmt(r.get("lung_ml")), r.get("lung_ml")),
        "warnings": ("<br>".join(_e(w) for w in warnings), len(warnings)),
    }
    thumb = outputs.get("montage")
    parts = [f'<td>{_link_img(thumb) if thumb else ""}</td>']
    for key, _, kind in COLUMNS:
        text, value = cells[key]
        value = "" if value is None else value
        cls = " class=num" if kind == "num" else ""
        parts.append(f'<td data-col="{key}" data-value="{_e(value)}"{cls}>{text}</td>')
    links = " · ".join(_link(name, kind) for kind, name in outputs.items())
    parts.append(f"<td>{links}<br><small>{_e(r.get('path'))}</small></td>")
    return "<tr>" + "".join(parts) + "</tr>"


def _link_img(name: str) -> str:
    src = _e(urllib.parse.quote(name))
    return f'<a href="{src}"><img src="{src}" alt="overlay" loading="lazy"></a>'


def html_report(rows: list[dict], failures: list[dict], files: list[str], title: str = "covseg screen") -> str:
    """The page for report ``rows`` (per-case records, as in summary.json) and ``failures`` (case_id, path,
    reason); ``files``: the other batch reports beside it (linked)."""
    n_warn = sum(r.get("status") == "warning" for r in rows)
    models = sorted({str(r.get("model")) for r in rows if r.get("model")})
    devices = sorted({str(r.get("device")) for r in rows if r.get("device")})
    head = "".join(f'<th data-key="{k}" data-type="{kind}">{_e(label)}</th>' for k, label, kind in COLUMNS)
    body = "\n".join(_row(r) for r in rows)
    fails = "\n".join(f"<tr><td>{_e(f.get('case_id'))}</td><td>{_e(f.get('path'))}</td><td>{_e(f.get('reason'))}"
                      "</td></tr>" for f in failures)
    fail_table = (f'<h2>Failures</h2><table id="failures"><thead><tr><th>case</th><th>input</th><th>reason</th></tr>'
                  f"</thead><tbody>\n{fails}\n</tbody></table>") if failures else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta {PAGE_MARK}>
<meta name="viewport" content="width=device-width"><title>{_e(title)}</title><style>{STYLE}</style></head><body>
<h1>{_e(title)}</h1>
<p id="summary">{len(rows) - n_warn} ok, {n_warn} with warnings (burden not trustworthy: see their warnings),
{len(failures)} failed. Model: {_e(", ".join(models) or "-")}; device: {_e(", ".join(devices) or "-")}.
Burden: infected share of the lungs in percent; volumes in millilitres. Click a column to sort.
Reports: {", ".join(_link(f, f) for f in files)}.</p>
<p class="note">{_e(DISCLAIMER)}</p>
<table id="cases"><thead><tr><th>overlay</th>{head}<th>outputs, input</th></tr></thead><tbody>
{body}
</tbody></table>
{fail_table}
<script>{SCRIPT}</script>
</body></html>
"""
