"""How each class looks: stain optical densities and per-class cell styles (size, nucleus, cytoplasm, granules)."""

from __future__ import annotations

import numpy as np

# Optical densities (natural log) per RGB channel of a unit amount of each stain component.
_OD = {
    "plasma": (0.03, 0.09, 0.055),
    "rbc": (0.06, 0.46, 0.33),
    "nucleus": (0.88, 1.08, 0.42),
    "blue": (0.50, 0.32, 0.12),  # basophilic cytoplasm
    "lilac": (0.12, 0.22, 0.10),  # neutrophilic cytoplasm
    "grey_blue": (0.30, 0.24, 0.13),  # monocyte
    "poly": (0.22, 0.36, 0.20),  # polychromatic normoblast cytoplasm
    "eos_gran": (0.08, 0.80, 0.90),
    "baso_gran": (1.30, 1.50, 0.75),
    "azur_gran": (0.60, 1.05, 0.45),
    "fine_gran": (0.30, 0.55, 0.25),
    "auer": (0.45, 1.20, 0.65),
}
_OD = {k: np.array(v, dtype=np.float32) for k, v in _OD.items()}

# Class styles. radius: cell radius in px (11.52 px/um); nuc: nucleus shape; nfrac: nucleus radius /
# cell radius; ecc: nucleus offset / cell radius; ndens: nucleus stain; chrom: (amplitude, grain px);
# cyto: (component, amount); gran: (component, per 1000 px^2, size px, strength, over nucleus).
_STYLES: dict[str, dict] = {
    "myeloblast": dict(radius=(60, 82), nuc="round", nfrac=(0.72, 0.82), ecc=(0.0, 0.12), ndens=(0.75, 0.95), chrom=(0.18, 2.5), nucleoli=(1, 3), cyto=("blue", (0.8, 1.2))),
    "neutrophil_segmented": dict(radius=(56, 72), nuc="segmented", nfrac=(0.27, 0.33), ecc=(0.0, 0.1), ndens=(1.15, 1.4), chrom=(0.25, 3.5), cyto=("lilac", (0.8, 1.2)), gran=("fine_gran", 6.0, 0.9, 0.35, False)),
    "lymphocyte": dict(radius=(40, 54), nuc="round", nfrac=(0.80, 0.88), ecc=(0.05, 0.15), ndens=(1.25, 1.5), chrom=(0.3, 4.0), cyto=("blue", (0.7, 1.1))),
    "hairy_cell": dict(radius=(56, 76), nuc="kidney", nfrac=(0.55, 0.65), ecc=(0.05, 0.2), ndens=(0.9, 1.1), chrom=(0.2, 3.0), cyto=("blue", (0.45, 0.7)), hairy=True),
    "monocyte": dict(radius=(70, 90), nuc="kidney", nfrac=(0.55, 0.66), ecc=(0.05, 0.2), ndens=(0.85, 1.05), chrom=(0.2, 4.0), cyto=("grey_blue", (0.8, 1.2)), vacuoles=(0, 6), gran=("fine_gran", 1.5, 0.8, 0.25, False)),
    "eosinophil": dict(radius=(62, 78), nuc="bilobed", nfrac=(0.26, 0.32), ecc=(0.0, 0.1), ndens=(1.1, 1.35), chrom=(0.25, 3.5), cyto=("lilac", (0.5, 0.8)), gran=("eos_gran", 45.0, 1.6, 0.9, False)),
    "normoblast": dict(radius=(38, 50), nuc="round", nfrac=(0.52, 0.62), ecc=(0.05, 0.25), ndens=(1.5, 1.8), chrom=(0.25, 3.0), cyto=("poly", (0.9, 1.3))),
    "promyelocyte_atypical": dict(radius=(64, 84), nuc="butterfly", nfrac=(0.34, 0.40), ecc=(0.0, 0.12), ndens=(0.85, 1.05), chrom=(0.2, 3.0), cyto=("blue", (0.6, 0.9)), gran=("azur_gran", 22.0, 1.1, 0.7, True), auer=(0, 3)),
    "lymphocyte_large_granular": dict(radius=(50, 62), nuc="round", nfrac=(0.58, 0.68), ecc=(0.1, 0.25), ndens=(1.2, 1.45), chrom=(0.3, 4.0), cyto=("blue", (0.4, 0.65)), gran=("azur_gran", 1.2, 1.2, 0.8, False)),
    "plasma_cell": dict(radius=(50, 64), nuc="round", nfrac=(0.48, 0.56), ecc=(0.35, 0.45), ndens=(1.2, 1.45), chrom=(0.45, 5.0), cyto=("blue", (1.3, 1.7)), hof=True, oval=(0.72, 0.85)),
    "smudge_cell": dict(radius=(50, 74), nuc="smudge", nfrac=(0.9, 1.0), ecc=(0.0, 0.1), ndens=(0.45, 0.65), chrom=(0.45, 6.0), cyto=None),
    "myelocyte": dict(radius=(58, 74), nuc="oval", nfrac=(0.48, 0.58), ecc=(0.2, 0.32), ndens=(1.0, 1.2), chrom=(0.28, 3.5), cyto=("lilac", (0.9, 1.3)), gran=("fine_gran", 10.0, 0.9, 0.4, False)),
    "promyelocyte": dict(radius=(66, 84), nuc="oval", nfrac=(0.55, 0.64), ecc=(0.15, 0.28), ndens=(0.85, 1.0), chrom=(0.2, 2.8), nucleoli=(0, 2), cyto=("blue", (0.8, 1.1)), gran=("azur_gran", 10.0, 1.2, 0.75, False)),
    "neutrophil_band": dict(radius=(56, 72), nuc="band", nfrac=(0.5, 0.6), ecc=(0.0, 0.08), ndens=(1.15, 1.4), chrom=(0.25, 3.5), cyto=("lilac", (0.8, 1.2)), gran=("fine_gran", 6.0, 0.9, 0.35, False)),
    "basophil": dict(radius=(54, 68), nuc="bilobed", nfrac=(0.28, 0.34), ecc=(0.0, 0.1), ndens=(0.9, 1.1), chrom=(0.2, 3.5), cyto=("lilac", (0.5, 0.8)), gran=("baso_gran", 16.0, 1.8, 0.9, True)),
    "metamyelocyte": dict(radius=(56, 72), nuc="kidney", nfrac=(0.5, 0.6), ecc=(0.08, 0.2), ndens=(1.05, 1.25), chrom=(0.28, 3.5), cyto=("lilac", (0.85, 1.2)), gran=("fine_gran", 7.0, 0.9, 0.35, False), indent=(0.35, 0.5)),
    "lymphocyte_neoplastic": dict(radius=(44, 64), nuc="cleaved", nfrac=(0.74, 0.84), ecc=(0.05, 0.15), ndens=(1.15, 1.4), chrom=(0.3, 3.5), cyto=("blue", (0.8, 1.2))),
    "lymphocyte_reactive": dict(radius=(66, 86), nuc="oval", nfrac=(0.42, 0.52), ecc=(0.1, 0.25), ndens=(1.05, 1.3), chrom=(0.3, 4.0), cyto=("blue", (0.7, 1.4)), wavy=True),
}

# Classes of the sibling datasets drawn like the MLL23 class they resemble most.
_STYLE_OF = {
    "erythroblast": "normoblast",
    "monoblast": "myeloblast",
    "promyelocyte_bizarre": "promyelocyte_atypical",
    "lymphocyte_atypical": "lymphocyte_reactive",
    "neutrophil": "neutrophil_segmented",
    "immature_granulocyte": "myelocyte",
}


def style_of(label: str) -> dict:
    """The drawing style of a class: its own, a sibling dataset's look-alike MLL23 class's, or a stable pick."""
    label = _STYLE_OF.get(label, label)
    if label in _STYLES:
        return _STYLES[label]
    # Labels outside MLL23 (custom configs) borrow a style chosen by a stable hash of the name.
    names = sorted(_STYLES)
    h = sum((i + 1) * ord(ch) for i, ch in enumerate(label))
    return _STYLES[names[h % len(names)]]


def add_stain(od: np.ndarray, density: np.ndarray, comp: str) -> None:
    """od (3, h, w) += density * the stain component's optical density per channel."""
    v = _OD[comp]
    for c in range(3):
        od[c] += density * v[c]
