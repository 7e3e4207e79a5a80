import itertools

import pytest
import torch

from semflow_pipeline import AnchorCodec, max_spread_palette, paper_palette

FITS = {"paper": 216, "max_spread": 4096, "simplex": 10**6}


@pytest.mark.parametrize("palette", ["paper", "max_spread", "simplex"])
@pytest.mark.parametrize("num_classes", [2, 11, 19, 171, 216])
def test_label_anchor_label_round_trip(palette, num_classes):
    codec = AnchorCodec(palette, num_classes, ignore_index=255)
    labels = torch.arange(num_classes).repeat(3)[torch.randperm(3 * num_classes)].reshape(1, 3, num_classes)
    anchors = codec.encode(labels)
    assert anchors.shape == (1, codec.num_channels, 3, num_classes)
    assert anchors.min() >= -1 and anchors.max() <= 1
    decoded, confidence = codec.decode(anchors)
    assert torch.equal(decoded, labels)
    torch.testing.assert_close(confidence, torch.ones_like(confidence), atol=1e-2, rtol=0)  # float32 distances


def test_paper_palette_matches_the_official_formula():
    rgb = (paper_palette(216) + 1) * 127.5
    for c in [0, 1, 5, 6, 37, 215]:
        expected = torch.tensor([50 * (c // 36), 50 * ((c % 36) // 6), 50 * (c % 6)], dtype=torch.float32)
        torch.testing.assert_close(rgb[c], expected)


def test_palettes_refuse_too_many_classes():
    with pytest.raises(ValueError, match="216"):
        AnchorCodec("paper", 217)
    with pytest.raises(ValueError, match="max_spread"):
        max_spread_palette(17**3)
    with pytest.raises(ValueError, match="palette"):
        AnchorCodec("rainbow", 5)


@pytest.mark.parametrize("palette,num_classes", [("paper", 11), ("paper", 216), ("max_spread", 11),
                                                 ("max_spread", 171), ("simplex", 11), ("simplex", 19)])
def test_maximum_perturbation_never_changes_a_label(palette, num_classes):
    codec = AnchorCodec(palette, num_classes)
    beta = codec.max_perturbation
    labels = torch.arange(num_classes).reshape(1, 1, num_classes)
    anchors = codec.encode(labels)
    # Random noise at the limit, plus the worst case: every channel pushed by exactly ±beta towards each
    # other anchor (the corner of the noise box closest to it).
    for _ in range(20):
        noisy = codec.perturb(anchors, beta, torch.Generator().manual_seed(_))
        assert torch.equal(codec.decode(noisy)[0], labels)
    a = codec.anchors[:, codec.class_channels]
    for i, j in itertools.product(range(num_classes), repeat=2):
        if i == j or (num_classes > 20 and j != (i + 1) % num_classes):
            continue
        state = codec.anchors[i].clone()
        state[codec.class_channels] += beta * torch.sign(a[j] - a[i])
        assert int(codec.decode(state[None, :, None, None])[0]) == i


def test_too_large_perturbation_is_refused():
    codec = AnchorCodec("paper", 11)
    assert 0.05 < codec.max_perturbation  # the paper's beta fits its palette
    with pytest.raises(ValueError, match="perturbation"):
        codec.perturb(torch.zeros(1, 3, 2, 2), codec.max_perturbation * 1.01)
    with pytest.raises(ValueError, match="perturbation"):
        codec.perturb(torch.zeros(1, 3, 2, 2), -0.1)


def test_confidence_is_zero_half_way_between_two_anchors():
    codec = AnchorCodec("simplex", 4)
    mid = (codec.anchors[0] + codec.anchors[1]) / 2
    _, confidence = codec.decode(mid[None, :, None, None])
    assert float(confidence) < 1e-6


def test_ignore_label_and_unknown_ids():
    codec = AnchorCodec("paper", 11, ignore_index=11)
    white = codec.encode(torch.full((1, 2, 2), 11))
    assert torch.all(white == 1)
    with pytest.raises(ValueError, match=r"Unknown class ids \[12\]"):
        codec.encode(torch.tensor([[[0, 12]]]))
    simplex = AnchorCodec("simplex", 3, ignore_index=255)
    void = simplex.encode(torch.full((1, 1, 1), 255))[0, :, 0, 0]
    assert torch.equal(void, torch.tensor([0.0, 0, 0, -1, -1, -1]))


def test_simplex_keeps_the_image_in_its_own_channels():
    codec = AnchorCodec("simplex", 5)
    image = torch.rand(2, 3, 4, 4) * 2 - 1
    lifted = codec.lift_image(image)
    assert lifted.shape == (2, 8, 4, 4)
    assert torch.equal(codec.image_from_state(lifted), image) and torch.all(lifted[:, 3:] == 0)
