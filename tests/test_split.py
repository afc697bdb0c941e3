from collections import Counter

from pipeline.stages.split import SplitItem, assign_splits

FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


def _items(n_patients=60, per_patient=12, labels=("a", "b", "c")):
    items = []
    for p in range(n_patients):
        for k in range(per_patient):
            i = p * per_patient + k
            items.append(SplitItem(f"{i:016x}", labels[i % len(labels)], f"g{i // 2:015x}", f"P{p}"))
    return items


def test_grouped_stratified_and_deterministic():
    items = _items()
    a = assign_splits(items, FRACTIONS, seed=1)
    assert a == assign_splits(list(reversed(items)), FRACTIONS, seed=1)
    per_patient = {}
    for it in items:
        per_patient.setdefault(it.patient_id, set()).add(a[it.key])
    assert all(len(s) == 1 for s in per_patient.values())
    counts = Counter(a.values())
    assert abs(counts["train"] / len(items) - 0.7) < 0.05
    assert abs(counts["test"] / len(items) - 0.2) < 0.05
    assert counts["validation"] > 0
    for label in "abc":
        n = sum(1 for it in items if it.label == label)
        train = sum(1 for it in items if it.label == label and a[it.key] == "train")
        assert abs(train / n - 0.7) < 0.08


def test_lookalike_groups_never_cross_splits_even_without_patients():
    items = [SplitItem(f"{i:016x}", "a", f"g{i // 3}", None) for i in range(300)]
    a = assign_splits(items, FRACTIONS, seed=0)
    for g in {it.group_id for it in items}:
        assert len({a[it.key] for it in items if it.group_id == g}) == 1


def test_previous_assignment_is_kept_and_new_units_fill_in():
    items = _items()
    first = assign_splits(items, FRACTIONS, seed=1)
    flipped = {k: ("test" if v == "train" else "train") for k, v in first.items()}
    more = items + [SplitItem(f"new{i:013x}", "a", f"n{i}", f"Q{i}") for i in range(50)]
    second = assign_splits(more, FRACTIONS, seed=1, previous=flipped)
    assert all(second[k] == flipped[k] for k in flipped)
    assert {second[f"new{i:013x}"] for i in range(50)} >= {"train"}
