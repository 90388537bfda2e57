"""The profile without rows: values listed only from k records up, none of an id column, the
figures of numbers against numpy's, null shares, npz arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quality.profile import TOP_VALUES, TooLarge, profile_arrays, profile_table

K = 10


def column(profile: dict, name: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in profile["columns"] if c["name"] == name)


def test_a_value_held_by_k_minus_one_rows_is_never_listed() -> None:
    values = ["common"] * 25 + ["edge"] * K + ["rare"] * (K - 1) + ["single"]
    frame = pd.DataFrame({"city": values})
    found = column(profile_table(frame, None, min_count=K), "city")
    assert found["distinct"] == 4
    assert found["top"] == [{"value": "common", "count": 25}, {"value": "edge", "count": K}]
    fewer = pd.DataFrame({"city": values[:-1]})  # without the single one: nothing is left over
    lower = column(profile_table(fewer, None, min_count=K - 1), "city")  # the threshold is what decides
    assert {"value": "rare", "count": K - 1} in lower["top"]


def test_the_threshold_holds_for_random_columns_against_a_plain_count() -> None:
    rng = np.random.default_rng(7)
    for seed in range(5):
        sizes = rng.integers(1, 3 * K, size=40)
        values = [f"v{seed}-{i}" for i, n in enumerate(sizes) for _ in range(n)]
        rng.shuffle(values)
        frame = pd.DataFrame({"c": pd.Categorical(values), "s": values})
        profile = profile_table(frame, None, min_count=K)
        truth = {f"v{seed}-{i}": int(n) for i, n in enumerate(sizes)}
        for name in ("c", "s"):
            found = column(profile, name)
            assert found["distinct"] == len(truth)
            listed = {t["value"]: t["count"] for t in found["top"]}
            assert all(truth[v] == n >= K for v, n in listed.items())
            frequent = sorted((n for n in truth.values() if n >= K), reverse=True)[:TOP_VALUES]
            assert sorted(listed.values(), reverse=True) == frequent


def test_an_id_column_shows_no_values_at_all() -> None:
    frame = pd.DataFrame({"user": ["u1"] * 20 + ["u2"] * 20, "n": list(range(40)), "x": [1.5] * 40})
    schema = {
        "columns": [
            {"name": "user", "type": "string", "role": "id"},
            {"name": "n", "type": "integer", "role": "id"},
            {"name": "x", "type": "float", "role": "feature"},
        ]
    }
    profile = profile_table(frame, schema, min_count=K)
    for name in ("user", "n"):
        found = column(profile, name)
        assert set(found) == {"name", "type", "role", "null_share"}, found
    assert column(profile, "x")["max"] == 1.5


def test_numbers_min_max_mean_std_and_null_share() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(5, 2, size=1000)
    x[::10] = np.nan
    frame = pd.DataFrame({"x": x, "n": rng.integers(-50, 50, size=1000)})
    profile = profile_table(frame, None, min_count=K)
    assert profile["rows"] == 1000 and profile["min_count"] == K
    fx, fn = column(profile, "x"), column(profile, "n")
    assert fx["type"] == "float" and fn["type"] == "integer"
    assert fx["null_share"] == pytest.approx(0.1)
    assert fx["min"] == pytest.approx(np.nanmin(x))
    assert fx["max"] == pytest.approx(np.nanmax(x))
    assert fx["mean"] == pytest.approx(np.nanmean(x))
    assert fx["std"] == pytest.approx(np.nanstd(x, ddof=1))
    assert fn["min"] == int(frame["n"].min()) and isinstance(fn["min"], int)
    assert "top" not in fx


def test_declared_types_decide_and_a_category_of_numbers_is_counted() -> None:
    frame = pd.DataFrame({"zip": [1000] * 12 + [2000] * 10, "flag": [True] * 11 + [False] * 11})
    schema = {"columns": [{"name": "zip", "type": "category"}, {"name": "flag", "type": "boolean"}]}
    profile = profile_table(frame, schema, min_count=K)
    assert column(profile, "zip")["top"] == [{"value": 1000, "count": 12}, {"value": 2000, "count": 10}]
    assert "min" not in column(profile, "zip")
    assert column(profile, "flag")["top"] == [{"value": False, "count": 11}, {"value": True, "count": 11}]


def test_a_threshold_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        profile_table(pd.DataFrame({"a": ["x"]}), None, min_count=1)


def test_npz_arrays_shape_dtype_and_figures(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    features = np.arange(36, dtype=np.float32).reshape(12, 3)
    labels = np.array([0, 1] * 6, dtype=np.int64)
    np.savez(path, x=features, y=labels, names=np.array(["a", "b"]))
    arrays = {a["name"]: a for a in profile_arrays(path, min_count=K, max_bytes=2**20)["arrays"]}
    assert arrays["x"] == {
        "name": "x",
        "shape": [12, 3],
        "dtype": "float32",
        "min": 0.0,
        "max": 35.0,
        "mean": 17.5,
    }
    assert arrays["y"]["mean"] == 0.5
    assert set(arrays["names"]) == {"name", "shape", "dtype"}  # text arrays: no values


def test_a_complement_below_k_is_not_revealed() -> None:
    frame = pd.DataFrame({"smoker": [True] * K + [False]})
    found = column(profile_table(frame, None, min_count=K), "smoker")
    assert found["top"] == []  # listing True: 10 would say exactly one record is False
    cities = pd.DataFrame({"city": ["a"] * 12 + ["b"] * 11 + ["c"] * 3})
    city = column(profile_table(cities, None, min_count=K), "city")
    assert city["top"] == [{"value": "a", "count": 12}]  # b left out: the rest (14) is >= k
    plenty = pd.DataFrame({"city": ["a"] * 12 + ["b"] * 11 + ["c"] * K})
    assert len(column(profile_table(plenty, None, min_count=K), "city")["top"]) == 3


def test_the_rest_of_random_columns_is_none_or_at_least_k() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        values = rng.choice(
            list("abcdefgh"), size=int(rng.integers(1, 80)), p=rng.dirichlet(np.ones(8))
        ).tolist()
        values += [None] * int(rng.integers(0, 5))
        found = column(profile_table(pd.DataFrame({"v": values}), None, min_count=K), "v")
        rest = sum(v is not None for v in values) - sum(t["count"] for t in found["top"])
        assert rest == 0 or rest >= K or not found["top"]  # nothing listed: nothing to take away from


def test_numbers_of_fewer_than_k_records_show_no_figures() -> None:
    one = column(profile_table(pd.DataFrame({"salary": [123456]}), None, min_count=K), "salary")
    assert one == {"name": "salary", "type": "integer", "role": "feature", "null_share": 0.0}
    few = pd.DataFrame({"salary": [1.0] * (K - 1) + [None] * 50})
    assert "min" not in column(profile_table(few, None, min_count=K), "salary")
    enough = pd.DataFrame({"salary": list(range(K))})
    assert column(profile_table(enough, None, min_count=K), "salary")["max"] == K - 1


def test_npz_arrays_of_fewer_than_k_rows_show_no_figures(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.full((K - 1, 4), 123456.0), s=np.float64(7.0))
    arrays = {a["name"]: a for a in profile_arrays(path, min_count=K, max_bytes=2**20)["arrays"]}
    assert set(arrays["x"]) == {"name", "shape", "dtype"}
    assert set(arrays["s"]) == {"name", "shape", "dtype"}


def test_an_npz_array_larger_than_the_limit_is_refused_before_loading(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((2**20, 4), dtype=np.float64))  # 32 MiB, about 32 KiB on disk
    assert path.stat().st_size < 2**20
    with pytest.raises(TooLarge, match=r"x takes 33554432 bytes once loaded; the run may use 1048576"):
        profile_arrays(path, min_count=K, max_bytes=2**20)
