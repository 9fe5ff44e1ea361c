"""The plan explorer: one self-contained HTML file (inline CSS/JS, no network at view time).

A searchable, sortable table of groups; the model's graph with the selected group
highlighted; per-group edits of ``ratio`` / ``keep`` / ``prunable`` exported as an edited
plan.json. Groups the planner pinned cannot be unpinned.
"""

from __future__ import annotations

import json
from html import escape

from ..plan.schema import Plan
from .scene import Scene
from .svg import scene_svg

__all__ = ["explorer_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;display:flex;height:100vh;color:#111}
#left{width:52%;display:flex;flex-direction:column;border-right:1px solid #ccc}
#right{flex:1;overflow:auto;background:#fafafa}
#bar{padding:8px;display:flex;gap:10px;align-items:center;flex-wrap:wrap;border-bottom:1px solid #ddd}
#tablewrap{flex:1;overflow:auto}
table{border-collapse:collapse;width:100%;font-size:12px}
th{position:sticky;top:0;background:#eee;cursor:pointer;text-align:left;padding:4px;user-select:none}
td{padding:3px 4px;border-bottom:1px solid #eee;font-family:monospace}
tr.sel td{background:#ffe9a8}
tr.pinned td.state{color:#a00}
#details{padding:8px;border-top:1px solid #ccc;max-height:38%;overflow:auto;font-size:12px}
#details input[type=number]{width:6em}
textarea{width:100%;height:8em;font-family:monospace;font-size:11px}
.muted{color:#666}
"""

_JS = r"""
const PLAN = JSON.parse(document.getElementById('plan-data').textContent);
const KEPT = JSON.parse(document.getElementById('kept-data').textContent);
const BASE_PINNED = PLAN.groups.map(g => !g.prunable);
let selected = -1, sortKey = 'index', sortAsc = true;
const $ = id => document.getElementById(id);

function keptOf(g) {
  if (KEPT && KEPT[g.name] !== undefined) return KEPT[g.name];
  if (!g.prunable) return g.size;
  const r = g.ratio !== null && g.ratio !== undefined ? g.ratio : parseFloat($('ratio').value || '0');
  let k = g.keep !== null && g.keep !== undefined ? g.keep : g.size - Math.floor(g.size * r);
  const rt = parseInt($('round-to').value || '0');
  if (rt > 0) k = Math.ceil(k / rt) * rt;
  return Math.max(g.min_keep ?? 1, Math.min(g.size, k));
}
function stateOf(g) { return g.prunable ? 'prunable' : 'pinned: ' + g.reason; }
function cell(v) { const td = document.createElement('td'); td.textContent = v; return td; }
function row(i) {
  const g = PLAN.groups[i], tr = document.createElement('tr');
  tr.dataset.index = i; tr.id = 'row-' + i;
  tr.className = g.prunable ? '' : 'pinned';
  const st = cell(stateOf(g)); st.className = 'state';
  [cell(i), cell(g.name), cell(g.size), cell(g.members.length), cell(g.zero_invariant ? 'yes' : 'no'), st,
   cell(g.ratio ?? ''), cell(g.keep ?? ''), cell(keptOf(g))].forEach(td => tr.appendChild(td));
  if (i === selected) tr.classList.add('sel');
  tr.onclick = () => select(i);
  return tr;
}
function sortValue(i) {
  const g = PLAN.groups[i];
  return {index: i, name: g.name, size: g.size, members: g.members.length, zero: g.zero_invariant ? 1 : 0,
          state: stateOf(g), ratio: g.ratio ?? -1, keep: g.keep ?? -1, kept: keptOf(g)}[sortKey];
}
function render() {
  const body = $('groups').tBodies[0], q = $('search').value.toLowerCase();
  const idx = PLAN.groups.map((_, i) => i).sort((a, b) => {
    const x = sortValue(a), y = sortValue(b);
    return (x < y ? -1 : x > y ? 1 : a - b) * (sortAsc ? 1 : -1);
  });
  const frag = document.createDocumentFragment();
  for (const i of idx) {
    const g = PLAN.groups[i];
    const hay = (g.name + ' ' + (g.reason || '') + ' ' + g.members.map(m => m.param).join(' ')).toLowerCase();
    if (q && !hay.includes(q)) continue;
    frag.appendChild(row(i));
  }
  body.replaceChildren(frag);
  $('count').textContent = body.rows.length + ' of ' + PLAN.groups.length + ' groups';
}
function highlight() {
  const nodes = document.querySelectorAll('#graph g.node, #graph g.legend');
  let first = null;
  nodes.forEach(n => {
    const gs = (n.dataset.groups || '').split(' ').filter(s => s !== '').map(Number);
    const on = selected >= 0 && gs.includes(selected);
    n.classList.toggle('hl', on);
    n.classList.toggle('dim', selected >= 0 && !on);
    if (on && !first && n.classList.contains('node')) first = n;
  });
  if (first && first.scrollIntoView) first.scrollIntoView({block: 'center', inline: 'center'});
}
function details() {
  const d = $('details');
  if (selected < 0) { d.innerHTML = '<span class="muted">Select a group (a row, or a layer in the graph).</span>'; return; }
  const g = PLAN.groups[selected], locked = BASE_PINNED[selected];
  d.innerHTML = '';
  const h = document.createElement('div');
  h.innerHTML = '<b></b> <span class="muted"></span>';
  h.children[0].textContent = g.name;
  h.children[1].textContent = g.size + ' channels, ' + (g.zero_invariant ? 'zero-invariant' : 'not zero-invariant') +
    (g.min_keep ? ', keeps at least ' + g.min_keep + ' (' + g.min_keep_reason + ')' : '');
  d.appendChild(h);
  const ed = document.createElement('div');
  ed.innerHTML = '<label>ratio <input id="edit-ratio" type="number" min="0" max="0.99" step="0.05"></label> ' +
    '<label>keep <input id="edit-keep" type="number" min="1" step="1"></label> ' +
    '<label><input id="edit-prunable" type="checkbox"> prunable</label> <span id="edit-note" class="muted"></span>';
  d.appendChild(ed);
  $('edit-ratio').value = g.ratio ?? ''; $('edit-keep').value = g.keep ?? ''; $('edit-keep').max = g.size;
  $('edit-keep').min = g.min_keep ?? 1;
  $('edit-prunable').checked = g.prunable;
  $('edit-prunable').disabled = locked;
  $('edit-ratio').disabled = $('edit-keep').disabled = !g.prunable;
  $('edit-note').textContent = locked ? 'pinned by the planner: ' + g.reason + ' (cannot be unpinned)'
    : (g.prunable ? '' : g.reason);
  $('edit-ratio').onchange = () => edit('ratio', $('edit-ratio').value);
  $('edit-keep').onchange = () => edit('keep', $('edit-keep').value);
  $('edit-prunable').onchange = () => edit('prunable', $('edit-prunable').checked);
  const ul = document.createElement('ul');
  g.members.slice(0, 200).forEach(m => {
    const li = document.createElement('li');
    li.textContent = m.param + ' axis ' + m.axis + ' [' + m.start + ':' + m.stop + ']' + (m.block > 1 ? ' block ' + m.block : '');
    ul.appendChild(li);
  });
  d.appendChild(ul);
}
function edit(field, value) {
  const g = PLAN.groups[selected];
  if (field === 'prunable') {
    if (BASE_PINNED[selected]) return;
    g.prunable = value; g.reason = value ? null : 'pinned by the user';
    if (!value) { g.ratio = null; g.keep = null; }
  } else if (field === 'ratio') {
    const r = value === '' ? null : parseFloat(value);
    g.ratio = (r === null || isNaN(r)) ? null : Math.min(0.99, Math.max(0, r));
    if (g.ratio !== null) g.keep = null;
  } else if (field === 'keep') {
    const k = value === '' ? null : parseInt(value);
    g.keep = (k === null || isNaN(k)) ? null : Math.min(g.size, Math.max(g.min_keep ?? 1, k));
    if (g.keep !== null) g.ratio = null;
  }
  render(); details();
}
function select(i) { selected = i; render(); highlight(); details(); }
function exportPlan() {
  const text = JSON.stringify(PLAN, null, 1);
  $('exported').value = text;
  const a = $('download');
  a.href = URL.createObjectURL(new Blob([text], {type: 'application/json'}));
  a.style.display = 'inline';
}
document.querySelectorAll('#groups th').forEach(th => th.onclick = () => {
  sortAsc = sortKey === th.dataset.key ? !sortAsc : true; sortKey = th.dataset.key; render();
});
document.querySelectorAll('#graph g.node').forEach(n => n.onclick = () => {
  const gs = (n.dataset.groups || '').split(' ').filter(s => s !== '').map(Number);
  if (gs.length) select(gs[0]);
});
$('search').oninput = render; $('ratio').oninput = render; $('round-to').oninput = render;
$('export').onclick = exportPlan;
render(); details();
document.body.dataset.ready = '1';
"""

_HEAD = ["index", "name", "size", "members", "zero", "state", "ratio", "keep", "kept"]
_LABELS = ["#", "group", "size", "members", "zero-inv", "prunable / reason", "ratio", "keep", "kept"]


def explorer_html(plan: Plan, scene: Scene | None = None, kept: dict[str, int] | None = None) -> str:
    """The explorer page for ``plan``; ``scene`` adds the model's graph, ``kept`` the channels
    each group kept in an actual prune (otherwise computed from the ratios on the page)."""
    data = plan.model_dump_json().replace("</", "<\\/")
    graph = scene_svg(scene) if scene is not None else '<p class="muted" style="padding:1em">No graph: pass --model SPEC.</p>'
    heads = "".join(f'<th data-key="{k}">{label}</th>' for k, label in zip(_HEAD, _LABELS))
    title = escape(f"{plan.model or 'model'}: {len(plan.groups)} groups")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>
<body>
<div id="left">
 <div id="bar"><b>{title}</b>
  <input id="search" type="search" placeholder="search groups, members, reasons">
  <label>ratio <input id="ratio" type="number" min="0" max="0.99" step="0.05" value="0.5" style="width:5em"></label>
  <label>round to <input id="round-to" type="number" min="0" step="1" value="0" style="width:4em"></label>
  <button id="export">export plan.json</button><a id="download" download="plan.json" style="display:none">download</a>
  <span id="count" class="muted"></span>
 </div>
 <div id="tablewrap"><table id="groups"><thead><tr>{heads}</tr></thead><tbody></tbody></table></div>
 <div id="details"></div>
 <div style="padding:0 8px 8px"><textarea id="exported" readonly placeholder="edited plan.json appears here"></textarea></div>
</div>
<div id="right">{graph}</div>
<script type="application/json" id="plan-data">{data}</script>
<script type="application/json" id="kept-data">{json.dumps(kept)}</script>
<script>{_JS}</script>
</body></html>
"""
