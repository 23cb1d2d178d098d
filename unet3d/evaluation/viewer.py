"""The interactive viewer of a review page: NiiVue (``@niivue/niivue``, BSD-2) shows a case's
scan, any of its sequences, with the segmentation overlaid (scroll, planes, opacity,
regions on and off).

NiiVue is installed by the project's setup (``npm ci``: ``package.json`` pins it) and
copied next to the pages; nothing is fetched at view time. A browser will not let a page
opened from disk (``file://``) fetch files, so each case's volumes travel in a script
beside its page, ``<case>.data.js`` (the NIfTI files base64-encoded). Without NiiVue the
pages show the static images and say how to add the viewer.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import nibabel as nib
import numpy as np

from data_generators.labels import CLASS_COLOURS
from unet3d_base.fileio import atomic_path

NIIVUE_VERSION = "0.69.0"  # as package.json pins it
NIIVUE_FILE = "niivue.umd.js"
REPO = Path(__file__).resolve().parents[2]
CLASS_NAMES = {1: "necrosis", 2: "edema", 3: "enhancing"}  # the class maps' 1, 2, 3


def niivue_source() -> Path | None:
    """NiiVue's browser bundle: ``$UNET3D_NIIVUE``, else the checkout's ``node_modules``."""
    candidates = [os.environ.get("UNET3D_NIIVUE"),
                  REPO / "node_modules" / "@niivue" / "niivue" / "dist" / NIIVUE_FILE]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def install_viewer(folder: Path) -> bool:
    """Copies NiiVue into the review folder (once); False when it is not installed."""
    source = niivue_source()
    if source is None:
        return False
    target = folder / NIIVUE_FILE
    if not target.is_file() or target.stat().st_size != source.stat().st_size:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    return True


def _nifti_base64(data: np.ndarray, affine: np.ndarray) -> str:
    raw = nib.Nifti1Image(data, affine).to_bytes()
    return base64.b64encode(gzip.compress(raw, compresslevel=1)).decode("ascii")


def write_case_data(folder: Path, case_id: str, sequences: dict[str, Path],
                    classes: np.ndarray, affine: np.ndarray) -> Path:
    """``<case>.data.js``: the sequences' NIfTI files as they are and one mask per class,
    base64, and the tumour's centre (scanner mm) where the first view is centred."""
    tumour = np.argwhere(classes > 0)
    centre = tumour.mean(axis=0) if tumour.size else (np.array(classes.shape) - 1) / 2
    centre_mm = nib.affines.apply_affine(affine, centre)
    meta = {"order": sorted(sequences, key=lambda name: name != "flair"),  # FLAIR first
            "centre_mm": [float(c) for c in centre_mm]}
    # base64 needs no escaping in JSON: the pieces are written as they are, not re-encoded
    pieces = [b'window.REVIEW_DATA = {"sequences": {']
    for index, (name, source) in enumerate(sequences.items()):
        pieces += [b", " if index else b"", json.dumps(name).encode(), b': "',
                   base64.b64encode(source.read_bytes()), b'"']
    pieces.append(b'}, "masks": {')
    for index, (cls, name) in enumerate(CLASS_NAMES.items()):
        mask = _nifti_base64((classes == cls).astype(np.uint8), affine)
        pieces += [b", " if index else b"", json.dumps(name).encode(), b': "',
                   mask.encode(), b'"']
    pieces.append(b"}, " + json.dumps(meta)[1:].encode() + b";\n")
    path = folder / f"{case_id}.data.js"
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"".join(pieces))
    return path


VIEWER_HTML = """<h2>Viewer</h2>
<p id="viewer-note">The interactive viewer is not installed next to this page: the images
above are static. Run <code>npm ci</code> in the unet3d-brats checkout (it installs NiiVue
{version}) or set <code>UNET3D_NIIVUE</code> to a copy of <code>{file}</code>, then write the
review again.</p>
<div id="viewer" hidden>
<p><label>sequence <select id="sequence"></select></label>
<button data-plane="0">axial</button><button data-plane="1">coronal</button>
<button data-plane="2">sagittal</button><button data-plane="3">all</button>
<label>opacity <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.6">
</label>{toggles}</p>
<div style="width:900px;height:600px"><canvas id="gl"></canvas></div>
<p>Scroll on a view to move through the slices; click to move the crosshair.</p></div>
<script src="{file}"></script><script src="{data}"></script>
<script>
(async () => {{
  if (!window.niivue || !window.REVIEW_DATA) return;
  const data = window.REVIEW_DATA, note = document.getElementById('viewer-note');
  note.hidden = true;
  document.getElementById('viewer').hidden = false;
  const nv = new niivue.Niivue({{backColor: [0, 0, 0, 1], isColorbar: false}});
  await nv.attachTo('gl');
  const colours = {colours};
  const names = Object.keys(colours), opacity = document.getElementById('opacity');
  for (const name of names) {{
    const c = colours[name];
    nv.addColormap('brats_' + name, {{R: [0, c[0]], G: [0, c[1]], B: [0, c[2]],
                                      A: [0, 255], I: [0, 255]}});
  }}
  const load = (base64, name, extra) =>
    niivue.NVImage.loadFromBase64({{base64, name: name + '.nii.gz', ...extra}});
  const select = document.getElementById('sequence');
  for (const name of data.order) select.add(new Option(name, name));
  const masks = [];
  for (const name of names)
    masks.push(await load(data.masks[name], name, {{colormap: 'brats_' + name,
      cal_min: 0.5, cal_max: 1, opacity: Number(opacity.value)}}));
  const show = async () => {{
    const scan = await load(data.sequences[select.value], select.value, {{colormap: 'gray'}});
    while (nv.volumes.length) nv.removeVolumeByIndex(0);
    for (const volume of [scan, ...masks]) nv.addVolume(volume);
    nv.scene.crosshairPos = nv.mm2frac(data.centre_mm);
    nv.updateGLVolume();
    document.body.dataset.viewer = 'ready';
  }};
  const paint = () => {{
    masks.forEach((mask, i) => {{
      const on = document.getElementById('show-' + names[i]).checked;
      nv.setOpacity(i + 1, on ? Number(opacity.value) : 0);
    }});
  }};
  select.addEventListener('change', show);
  opacity.addEventListener('input', paint);
  names.forEach(name => document.getElementById('show-' + name)
    .addEventListener('change', paint));
  document.querySelectorAll('button[data-plane]').forEach(b =>
    b.addEventListener('click', () => nv.setSliceType(Number(b.dataset.plane))));
  await show();
}})();
</script>"""


def viewer_html(case_id: str) -> str:
    """The case page's viewer section (NiiVue when it sits beside the page)."""
    colours = {name: CLASS_COLOURS[cls] for cls, name in CLASS_NAMES.items()}
    toggles = "".join(f'<label><input type="checkbox" id="show-{name}" checked> {name}</label>'
                      for name in colours)
    return VIEWER_HTML.format(version=NIIVUE_VERSION, file=NIIVUE_FILE,
                              data=html.escape(quote(f"{case_id}.data.js")), toggles=toggles,
                              colours=json.dumps({k: list(v) for k, v in colours.items()}))
