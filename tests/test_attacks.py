"""Tests of nbs_lib.methods.attacks: the paper's attack notation, threat-model bounds and the
field's sanity checks for attack implementations (on a tiny model trained on digits)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nbs_lib.methods.attacks import (
    AttackSpec,
    adversarial_batches,
    attack,
    autoattack,
    fgsm,
    parse_attack,
    pgd,
)

# --------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread")



class _Normalize(nn.Module):
    def forward(self, x):
        return (x - 0.3) / 0.4


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [0, 1]
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


def _train_small_cnn(x, y, epochs=8, seed=0):
    """A small CNN with BatchNorm and Dropout (so eval mode matters), about 99% on digits."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        _Normalize(),
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(32 * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def digits_model():
    x, y = _digits()
    model = _train_small_cnn(x[:1400], y[:1400])
    return model, x[1400:], y[1400:]


def _acc(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


# --------------------------------------------------------------------------- parsing

PAPER_SPECS = [
    # spec, name, steps, eps on [0,1], step size, norm
    ("PGD-10#0.5", "PGD", 10, 0.5 / 255, 1.25 * 0.5 / 255 / 10, "Linf"),
    ("PGD-10#2.0", "PGD", 10, 2.0 / 255, 1.25 * 2.0 / 255 / 10, "Linf"),
    ("FGSM#0.5", "FGSM", 1, 0.5 / 255, 0.5 / 255, "Linf"),
    ("FGSM#2.0", "FGSM", 1, 2.0 / 255, 2.0 / 255, "Linf"),
    ("AA#0.5", "AA", 100, 0.5 / 255, 1.25 * 0.5 / 255 / 100, "Linf"),
    ("PGD-20-L2#0.5", "PGD", 20, 0.5, 1.25 * 0.5 / 20, "L2"),
]


@pytest.mark.parametrize("text,name,steps,eps,step,norm", PAPER_SPECS)
def test_parse_paper_specs(text, name, steps, eps, step, norm):
    s = parse_attack(text)
    assert (s.name, s.steps, s.norm) == (name, steps, norm)
    assert s.eps == pytest.approx(eps, rel=1e-12)
    assert s.step_size == pytest.approx(step, rel=1e-12)
    assert str(s) == text  # canonical text round-trips exactly
    assert parse_attack(str(s)) == s


@pytest.mark.parametrize(
    "text,canonical",
    [("pgd-10#2", "PGD-10#2.0"), (" FGSM # 8 ", "FGSM#8.0"), ("AA-10#0.5", "AA-10#0.5"),
     ("PGD-7-Linf#1.5", "PGD-7#1.5"), ("fgsm-l2#1", "FGSM-L2#1.0"), ("AA#0", "AA#0.0")],
)
def test_parse_normalises_variants(text, canonical):
    s = parse_attack(text)
    assert str(s) == canonical
    assert parse_attack(canonical) == s


def test_parse_accepts_spec_objects():
    s = AttackSpec("PGD", 10, 0.5)
    assert parse_attack(s) is s


@pytest.mark.parametrize(
    "bad,fragment",
    [
        ("CW#0.5", "Accepted forms"),
        ("PGD-10", "Accepted forms"),
        ("", "Accepted forms"),
        ("PGD-10#abc", "Accepted forms"),
        ("PGD#0.5", "number of steps"),
        ("PGD-0#0.5", "at least 1"),
        ("FGSM-3#0.5", "FGSM takes no step"),
        ("FGSM#300", "outside [0, 255]"),
        ("PGD-10#-1", "outside [0, 255]"),
        ("PGD-10#nan", "Accepted forms"),
    ],
)
def test_parse_rejects_bad_specs(bad, fragment):
    with pytest.raises(ValueError) as err:
        parse_attack(bad)
    assert fragment in str(err.value)


def test_spec_validation():
    with pytest.raises(ValueError):
        AttackSpec("PGD", 0, 0.5)
    with pytest.raises(ValueError):
        AttackSpec("PGD", 10, 256.0)
    with pytest.raises(ValueError):
        AttackSpec("PGD", 10, 0.5, norm="L1")
    with pytest.raises(TypeError):
        parse_attack(0.5)


def test_functions_reject_eps_off_the_pixel_scale(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="0.5/255"):
        pgd(model, x[:4], y[:4], eps=2.0, steps=10)  # 2.0 meant as 2/255
    with pytest.raises(ValueError):
        fgsm(model, x[:4], y[:4], eps=-0.1)
    with pytest.raises(ValueError):
        pgd(model, x[:4], y[:4], eps=0.1, steps=0)


@pytest.mark.parametrize("attack_fn", ["pgd", "fgsm", "autoattack"])
@pytest.mark.parametrize("bad, fragment", [("normalised", r"\[0, 1\] scale"), ("uint8", "uint8"),
                                           ("nan", "NaN or Inf"), ("scaled", "divide 0-255")])
def test_attacks_refuse_images_off_the_pixel_scale(digits_model, attack_fn, bad, fragment):
    model, x, y = digits_model
    x = x[:4].clone()
    images = {"normalised": (x - 0.45) / 0.22, "uint8": (x * 255).to(torch.uint8), "scaled": x * 255,
              "nan": x.index_put_((torch.tensor([0]),), torch.tensor(float("nan")))}[bad]
    fn = {"pgd": lambda: pgd(model, images, y[:4], eps=0.5 / 255, steps=2),
          "fgsm": lambda: fgsm(model, images, y[:4], eps=0.5 / 255),
          "autoattack": lambda: autoattack(model, images, y[:4], eps=0.5 / 255, steps=1, n_queries=1)}[attack_fn]
    with pytest.raises(ValueError, match=fragment):
        fn()


# --------------------------------------------------------------------------- bounds

BOUND_SPECS = ["FGSM#8", "PGD-10#8", "PGD-10#0.5", "PGD-10-L2#0.5", "FGSM-L2#0.5", "AA-5#8"]


@pytest.mark.parametrize("text", BOUND_SPECS)
def test_adversarial_examples_stay_in_the_threat_model(digits_model, text):
    model, x, y = digits_model
    x, y = x[:48], y[:48]
    s = parse_attack(text)
    kw = {"n_queries": 50} if s.name == "AA" else {}
    x_adv = attack(model, x, y, s, **kw)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if s.norm == "Linf":
        assert delta.abs().max() <= s.eps + 1e-6
    else:
        assert delta.norm(dim=1).max() <= s.eps + 1e-5
    assert delta.abs().max() > 0  # it did move


@pytest.mark.parametrize("text", ["FGSM#0", "PGD-10#0", "AA#0", "PGD-10-L2#0"])
def test_eps_zero_returns_the_input(digits_model, text):
    model, x, y = digits_model
    assert torch.equal(attack(model, x[:16], y[:16], text), x[:16])


def test_random_start_is_seeded_and_bounded(digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    eps = 8 / 255
    a = pgd(model, x, y, eps, 5, random_start=True, generator=torch.Generator().manual_seed(3))
    b = pgd(model, x, y, eps, 5, random_start=True, generator=torch.Generator().manual_seed(3))
    c = pgd(model, x, y, eps, 5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - x).abs().max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1
    l2 = pgd(model, x, y, 0.5, 5, norm="L2", random_start=True, generator=torch.Generator().manual_seed(3))
    assert (l2 - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


# --------------------------------------------------------------------------- sanity checks


def test_accuracy_does_not_increase_with_eps(digits_model):
    model, x, y = digits_model
    clean = _acc(model, x, y)
    assert clean > 90
    ladder = [0, 1, 2, 4, 8, 16, 32, 64]
    accs = [_acc(model, attack(model, x, y, f"PGD-10#{e}"), y) for e in ladder]
    assert accs[0] == clean  # eps 0 is the clean accuracy
    for lo, hi in zip(accs, accs[1:]):
        assert hi <= lo + 1e-9, accs
    assert accs[-1] < 5, accs  # a large eps breaks the model
    big_fgsm = _acc(model, attack(model, x, y, "FGSM#128"), y)
    assert big_fgsm < 10


def test_pgd_is_at_least_as_strong_as_fgsm(digits_model):
    model, x, y = digits_model
    for e in [4, 8, 16, 32]:
        acc_pgd = _acc(model, attack(model, x, y, f"PGD-10#{e}"), y)
        acc_fgsm = _acc(model, attack(model, x, y, f"FGSM#{e}"), y)
        assert acc_pgd <= acc_fgsm, (e, acc_pgd, acc_fgsm)


def test_autoattack_is_at_least_as_strong_as_pgd(digits_model):
    model, x, y = digits_model
    x, y = x[:64], y[:64]
    acc_pgd = _acc(model, attack(model, x, y, "PGD-10#16"), y)
    acc_aa = _acc(model, attack(model, x, y, "AA-20#16", n_queries=300), y)
    assert acc_aa <= acc_pgd + 100.0 / len(x)  # at most one sample of slack


def test_matches_torchattacks(digits_model):
    """Same attack, same numbers: our PGD/FGSM agree with torchattacks (no random start)."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits_model
    x, y = x[:64], y[:64]
    s = parse_attack("PGD-10#8")
    theirs = torchattacks.PGD(model, eps=s.eps, alpha=s.step_size, steps=10, random_start=False)(x, y)
    assert (pgd(model, x, y, s.eps, 10) - theirs).abs().max() < 1e-6
    theirs = torchattacks.FGSM(model, eps=s.eps)(x, y)
    assert (fgsm(model, x, y, s.eps) - theirs).abs().max() < 1e-6


def test_per_sample_result_does_not_depend_on_the_batch(digits_model):
    model, x, y = digits_model
    x, y = x[:40], y[:40]
    whole = pgd(model, x, y, 8 / 255, 10)
    halves = torch.cat([pgd(model, x[:13], y[:13], 8 / 255, 10), pgd(model, x[13:], y[13:], 8 / 255, 10)])
    assert (whole - halves).abs().max() < 1e-6


def test_works_inside_no_grad(digits_model):
    model, x, y = digits_model
    with torch.no_grad():
        inside = attack(model, x[:16], y[:16], "PGD-5#8")
    assert torch.equal(inside, attack(model, x[:16], y[:16], "PGD-5#8"))


def test_unknown_options_are_rejected(digits_model):
    model, x, y = digits_model
    with pytest.raises(TypeError, match="Unknown attack option"):
        attack(model, x[:4], y[:4], "PGD-5#8", random_strat=True)
    # options of another attack are ignored, so one set serves a mixed list of specs
    assert torch.equal(attack(model, x[:4], y[:4], "FGSM#8", n_queries=10), attack(model, x[:4], y[:4], "FGSM#8"))


def test_channels_last_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).eval()
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))
    cl = x.contiguous(memory_format=torch.channels_last)
    out = pgd(model, cl, y, 8 / 255, 5)
    assert torch.allclose(out, pgd(model, x, y, 8 / 255, 5), atol=1e-6)
    assert (out - x).abs().max() <= 8 / 255 + 1e-6


def test_amp_is_a_no_op_off_cuda(digits_model):
    model, x, y = digits_model
    if x.is_cuda:
        pytest.skip("CPU-only check")
    assert torch.equal(pgd(model, x[:8], y[:8], 8 / 255, 3, amp=True), pgd(model, x[:8], y[:8], 8 / 255, 3))


# --------------------------------------------------------------------------- side effects


@pytest.mark.parametrize("text", ["FGSM#8", "PGD-5#8", "PGD-5-L2#0.5", "AA-5#8"])
def test_model_state_is_restored_and_weights_get_no_grad(digits_model, text):
    model, x, y = digits_model
    x, y = x[:16], y[:16]
    eval_result = attack(model, x, y, text, n_queries=20) if text.startswith("AA") else attack(model, x, y, text)
    # a mixed state: training model with one frozen eval-mode BatchNorm
    model.train()
    model[2].eval()
    model[2].weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    try:
        rng = torch.get_rng_state()
        kw = {"n_queries": 20} if text.startswith("AA") else {}
        x_adv = attack(model, x, y, text, **kw)
        assert [m.training for m in model.modules()] == modes
        assert [p.requires_grad for p in model.parameters()] == flags
        assert all(p.grad is None for p in model.parameters())
        assert torch.equal(torch.get_rng_state(), rng)  # global RNG untouched (AutoAttack reseeds)
        # the attack ran in eval mode: dropout off, BatchNorm on running statistics
        assert torch.allclose(x_adv, eval_result, atol=1e-6)
    finally:
        model[2].weight.requires_grad_(True)
        model.eval()


def test_adversarial_batches_covers_the_dataset(digits_model):
    model, x, y = digits_model
    x, y = x[:50], y[:50]
    got = list(adversarial_batches(model, (x, y), "FGSM#8", device="cpu", batch_size=16, progress=False))
    assert [len(b[0]) for b in got] == [16, 16, 16, 2]
    xs, advs, ys = (torch.cat(t) for t in zip(*got))
    assert torch.equal(xs, x) and torch.equal(ys, y)
    assert torch.allclose(advs, attack(model, x, y, "FGSM#8"), atol=1e-6)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=20)
    got = list(adversarial_batches(model, loader, "FGSM#8", device="cpu", progress=False))
    assert [len(b[0]) for b in got] == [20, 20, 10]
    assert math.isclose(torch.cat([b[1] for b in got]).sum().item(), advs.sum().item(), rel_tol=1e-6)


# --------------------------------------------------------------------------- stop when broken


class _RowCounter(nn.Module):
    """Wraps a model and counts the images of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


@pytest.mark.parametrize("norm, eps", [("Linf", 12 / 255), ("L2", 1.0)])
def test_stopping_when_broken_breaks_a_superset_for_less_work(digits_model, norm, eps):
    model, x, y = digits_model
    x, y = x[:96], y[:96]
    counted = _RowCounter(model).eval()
    last = pgd(counted, x, y, eps, 10, norm=norm)
    full_rows, counted.rows = counted.rows, 0
    early = pgd(counted, x, y, eps, 10, norm=norm, stop_when_broken=True)
    with torch.no_grad():
        broken_last, broken_early = model(last).argmax(1) != y, model(early).argmax(1) != y
    assert broken_last.any() and (~broken_last).any(), "the radius should break some images, not all"
    assert bool((broken_early | ~broken_last).all()), "an image the last iterate breaks was left standing"
    assert counted.rows < full_rows  # broken images take no more steps
    standing = ~broken_early  # never broken: the same trajectory as without stopping
    assert (early[standing] - last[standing]).abs().max() < 1e-5
    delta = (early - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5 and float(early.min()) >= 0 and float(early.max()) <= 1


def test_stopping_when_broken_with_per_image_radii_and_targets(digits_model):
    model, x, y = digits_model
    x, y = x[:48], y[:48]
    radii = torch.linspace(1, 24, 48) / 255
    early = pgd(model, x, y, radii, 10, stop_when_broken=True)
    assert bool(((early - x).flatten(1).abs().amax(1) <= radii + 1e-6).all())
    target = (y + 1) % 10
    hit_last = model(pgd(model, x, target, 24 / 255, 10, targeted=True)).argmax(1) == target
    hit_early = model(pgd(model, x, target, 24 / 255, 10, targeted=True, stop_when_broken=True)).argmax(1) == target
    assert bool((hit_early | ~hit_last).all()) and hit_early.sum() >= hit_last.sum()


def test_evaluation_counts_an_image_broken_at_any_iterate(digits_model):
    from nbs_lib.methods.evaluate import robust_accuracy

    model, x, y = digits_model
    x, y = x[:96], y[:96]
    stopped = robust_accuracy(model, x, y, "PGD-10#12", device="cpu", progress=False)
    last = robust_accuracy(model, x, y, "PGD-10#12", device="cpu", progress=False, stop_when_broken=False)
    assert stopped <= last
