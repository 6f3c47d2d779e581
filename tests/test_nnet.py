"""Tests of the sub-centre classifier, the AAM + Inter-TopK loss, the margin schedule and SyncBatchNorm."""

import math
import socket

import pytest
import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import LogSoftmaxWrapper
from speechbrain.utils.checkpoints import Checkpointer
from test_lobes import SMALL, randomize
from torch.nn.modules.batchnorm import _BatchNorm

from lap_speechbrain.lobes import LAPSpeakerBackend
from lap_speechbrain.nnet import (
    AdditiveAngularMarginInterTopK,
    MarginScheduler,
    SubCenterClassifier,
    warmup_cosine_schedule,
)
from lap_speechbrain.nnet.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm


def expected_logits(cosines, target, margin, top_k, penalty, scale=30.0):
    """docs/lap_spec.md section 4 for one row, written with plain floats."""
    logits = []
    others = sorted((c for j, c in enumerate(cosines) if j != target), reverse=True)
    hardest = set(others[:top_k]) if penalty > 0 else set()
    for j, cosine in enumerate(cosines):
        theta = math.acos(cosine)
        if j == target:
            if theta + margin <= math.pi:
                value = math.cos(theta + margin)
            else:
                value = cosine - margin * math.sin(margin)
        elif cosine in hardest:
            value = math.cos(theta - penalty)
        else:
            value = cosine
        logits.append(scale * value)
    return logits


pytestmark = pytest.mark.usefixtures("single_thread")
CASES = [
    # cosines, target, margin, top_k, penalty
    ([0.8, 0.5, -0.2, 0.3], 0, 0.2, 0, 0.0),  # plain AAM
    ([0.8, 0.5, -0.2, 0.3, 0.6, 0.1], 1, 0.3, 2, 0.06),  # top-2 of the others: 0.8, 0.6
    ([0.1, -0.99, 0.7, 0.4], 1, 0.3, 5, 0.06),  # theta_y + m > pi: fallback; k > C-1
    ([0.9, 0.2, 0.0], 2, 0.0, 1, 0.06),  # zero margin, penalty still applies
]


@pytest.mark.parametrize("cosines,target,margin,top_k,penalty", CASES)
def test_logits_and_loss_match_the_formula(cosines, target, margin, top_k, penalty):
    aam = AdditiveAngularMarginInterTopK(margin=margin, scale=30.0, top_k=top_k, top_k_penalty=penalty)
    outputs = torch.tensor([cosines], dtype=torch.float64)
    targets = F.one_hot(torch.tensor([target]), len(cosines))
    logits = aam(outputs, targets)
    expected = torch.tensor([expected_logits(cosines, target, margin, top_k, penalty)])
    torch.testing.assert_close(logits, expected.float(), rtol=1e-5, atol=1e-5)
    loss = LogSoftmaxWrapper(aam)(outputs.float().unsqueeze(1), torch.tensor([[target]]))
    torch.testing.assert_close(loss, F.cross_entropy(expected, torch.tensor([target])).float())


def test_fallback_is_used_exactly_when_theta_plus_margin_exceeds_pi():
    aam = AdditiveAngularMarginInterTopK(margin=0.3, top_k=0)
    # theta = pi - 0.31 (no fallback) and pi - 0.29 (fallback)
    cosines = torch.tensor([[math.cos(math.pi - 0.31), 0.0], [math.cos(math.pi - 0.29), 0.0]])
    logits = aam(cosines, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert logits[0, 0] == pytest.approx(30 * math.cos(math.pi - 0.01), abs=1e-4)
    assert logits[1, 0] == pytest.approx(30 * (cosines[1, 0].item() - 0.3 * math.sin(0.3)), abs=1e-4)


def test_margin_and_penalty_can_change_at_any_step():
    aam = AdditiveAngularMarginInterTopK(margin=0.0, top_k=1, top_k_penalty=0.0)
    outputs, targets = torch.tensor([[0.5, 0.7]]), torch.tensor([[1.0, 0.0]])
    before = aam(outputs, targets)
    aam.margin, aam.top_k_penalty = 0.4, 0.1
    after = aam(outputs, targets)
    assert after[0, 0] == pytest.approx(30 * math.cos(math.acos(0.5) + 0.4), abs=1e-4)
    assert after[0, 1] == pytest.approx(30 * math.cos(math.acos(0.7) - 0.1), abs=1e-4)
    torch.testing.assert_close(before, 30 * outputs)


def test_margin_loss_keeps_no_constant_of_a_past_margin():
    """SpeechBrain's AdditiveAngularMargin stores cos(m), sin(m) and the fallback
    constants at construction; after a schedule moves the margin they would be stale."""
    aam = AdditiveAngularMarginInterTopK(margin=0.2, top_k=2, top_k_penalty=0.06)
    floats = {name for name, value in vars(aam).items() if isinstance(value, float)}
    assert floats == {"margin", "scale", "top_k_penalty"}


def test_subcenter_classifier_is_initialised_as_the_reference_tensor():
    """Xavier-uniform over the reference's (K, E, classes) tensor (paper sizes)."""
    subcenters, embedding, classes = 3, 192, 17982
    torch.manual_seed(0)
    weight = SubCenterClassifier(embedding, classes, subcenters).weight.detach()
    bound = math.sqrt(6.0 / (embedding * classes + subcenters * classes))  # fan_in + fan_out of (K, E, C)
    assert weight.abs().max() <= bound and weight.abs().max() > 0.99 * bound
    # Uniform(-b, b) has variance b^2 / 3: expected norm of one sub-centre sqrt(E / 3) b.
    norms = weight.norm(dim=1)
    assert norms.mean().item() == pytest.approx(math.sqrt(embedding / 3) * bound, rel=0.01)
    # 2-d Xavier over (K * classes, E), SpeechBrain's Classifier, is about 8x larger.
    two_d = math.sqrt(embedding / 3) * math.sqrt(6.0 / (embedding + subcenters * classes))
    assert norms.mean().item() < two_d / 7


def test_subcenter_classifier_takes_the_nearest_subcentre():
    torch.manual_seed(0)
    classifier = SubCenterClassifier(input_size=6, out_neurons=4, num_subcenters=3)
    embeddings = torch.randn(5, 1, 6)
    cosines = classifier(embeddings).squeeze(1)
    weight = classifier.weight.detach()
    for c in range(4):
        for b in range(5):
            best = max(
                F.cosine_similarity(embeddings[b, 0], weight[c * 3 + k], dim=0) for k in range(3)
            )
            assert cosines[b, c].item() == pytest.approx(best.item(), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_is_finite_with_low_precision(dtype):
    """Under autocast and with fp16/bf16 inputs, including cosines of exactly +-1
    (a collapsed embedding), where sqrt(1 - cos^2) has an infinite gradient."""
    torch.manual_seed(0)
    classifier = SubCenterClassifier(input_size=8, out_neurons=6)
    loss_fn = LogSoftmaxWrapper(AdditiveAngularMarginInterTopK(margin=0.3, top_k=5, top_k_penalty=0.06))
    embeddings = torch.randn(4, 1, 8, requires_grad=True)
    targets = torch.tensor([[0], [1], [2], [3]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(classifier(embeddings), targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(classifier.weight.grad).all()

    cosines = torch.tensor([[1.0, -1.0, 0.3], [-1.0, 1.0, 1.0]], dtype=dtype, requires_grad=True)
    loss = loss_fn(cosines.unsqueeze(1), torch.tensor([[0], [0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(cosines.grad).all()


def build_schedule(curve, steps_per_epoch=101):
    aam = AdditiveAngularMarginInterTopK(margin=0.0, top_k=5, top_k_penalty=0.06)
    schedule = MarginScheduler(aam, 0.0, 0.3, increase_start_epoch=2, fix_start_epoch=3,
                               curve=curve, final_top_k_penalty=0.06)
    schedule.set_steps_per_epoch(steps_per_epoch)
    return aam, schedule


@pytest.mark.parametrize(
    "curve,midpoint",
    [
        # The paper: m_i = 0.3 ln(x_i / 0.005) / ln(200), x = linspace(0.005, 1, N)
        ("log", 0.3 * math.log((0.005 + 1.0) / 2 / 0.005) / math.log(200)),
        ("linear", 0.15),
        # Mirror of the log curve: 0.3 (200^f - 1) / 199 at f = 1/2
        ("exp", 0.3 * (math.sqrt(200) - 1) / 199),
    ],
)
def test_margin_schedule_start_midpoint_end(curve, midpoint):
    _, schedule = build_schedule(curve)
    start = 2 * 101  # the ramp's N = 101 steps are steps 202 .. 302
    assert schedule.margin_at(0) == 0.0
    assert schedule.margin_at(start - 1) == 0.0
    assert schedule.margin_at(start) == pytest.approx(0.0, abs=1e-12)
    assert schedule.margin_at(start + 50) == pytest.approx(midpoint, rel=1e-9)
    assert schedule.margin_at(start + 100) == pytest.approx(0.3, rel=1e-9)
    assert schedule.margin_at(start + 500) == 0.3
    values = [schedule.margin_at(step) for step in range(start, start + 101)]
    assert values == sorted(values)


def test_margin_schedule_drives_the_loss():
    aam, schedule = build_schedule("log", steps_per_epoch=10)
    assert (aam.margin, aam.top_k_penalty) == (0.0, 0.0)
    for _ in range(25):
        margin = schedule.step()
    assert aam.margin == margin == schedule.margin_at(25)
    assert 0.001 < margin < 0.3
    assert aam.top_k_penalty == pytest.approx(0.06 * margin / 0.3)
    for _ in range(20):
        schedule.step()
    assert (aam.margin, aam.top_k_penalty) == (0.3, pytest.approx(0.06))


def test_margin_schedule_is_checkpointed(tmp_path):
    aam, schedule = build_schedule("log", steps_per_epoch=10)
    checkpointer = Checkpointer(tmp_path, recoverables={"margin_scheduler": schedule})
    for _ in range(27):
        schedule.step()
    checkpointer.save_checkpoint()

    restored_aam, restored = build_schedule("log", steps_per_epoch=3)
    Checkpointer(tmp_path, recoverables={"margin_scheduler": restored}).recover_if_possible()
    assert (restored.current_step, restored.steps_per_epoch) == (27, 10)
    assert restored_aam.margin == aam.margin == schedule.margin_at(27)
    assert restored_aam.top_k_penalty == aam.top_k_penalty


def test_warmup_cosine_schedule_resumes_exactly_from_a_checkpoint(tmp_path):
    def optimizer_and_schedule():
        optimizer = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
        return optimizer, warmup_cosine_schedule(optimizer, 50, peak_lr=1e-3, final_lr=1e-5, warmup_fraction=0.1)

    def advance(optimizer, schedule, steps):
        lrs = []
        for _ in range(steps):
            optimizer.step()
            schedule.step()
            lrs.append(optimizer.param_groups[0]["lr"])
        return lrs

    optimizer, schedule = optimizer_and_schedule()
    lrs = [optimizer.param_groups[0]["lr"]] + advance(optimizer, schedule, 49)
    assert lrs[0] == pytest.approx(1e-3 / 5)  # 5 warm-up steps
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 4
    assert lrs[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # monotonic decay after warm-up

    # Killed after 17 steps: a new run restores optimiser and schedule through SpeechBrain.
    optimizer, schedule = optimizer_and_schedule()
    advance(optimizer, schedule, 17)
    Checkpointer(tmp_path, {"optimizer": optimizer, "lr_schedule": schedule}).save_checkpoint()
    optimizer, schedule = optimizer_and_schedule()
    Checkpointer(tmp_path, {"optimizer": optimizer, "lr_schedule": schedule}).recover_if_possible()
    resumed = [optimizer.param_groups[0]["lr"]] + advance(optimizer, schedule, 32)
    assert resumed == lrs[17:]  # exactly, not approximately


# ----------------------------------------------------------------------------
# SyncBatchNorm
# ----------------------------------------------------------------------------
class FrontAndBackend(torch.nn.Module):
    """A trainable layer in front of a small LAP backend, so that LAP's input
    needs a gradient (stage 2)."""

    def __init__(self):
        super().__init__()
        self.front = torch.nn.Linear(32, 32)
        self.backend = randomize(LAPSpeakerBackend(**SMALL, lap_dropout=0.0, frame_dropout=0.0))

    def forward(self, states, lengths):
        return self.backend(self.front(states), lengths)


def sync_test_model() -> FrontAndBackend:
    torch.manual_seed(0)
    return FrontAndBackend().double().train()


def sync_test_batch():
    """Four utterances (hidden states, relative lengths) and the embedding projection."""
    generator = torch.Generator().manual_seed(1)
    states = torch.randn(5, 4, 20, 32, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([1.0, 0.7, 0.5, 1.0], dtype=torch.float64)
    projection = torch.randn(4, 8, generator=generator, dtype=torch.float64)
    return states, lengths, projection


def sync_test_loss(model, states, lengths, projection):
    """Mean over utterances, so that the whole batch's loss is the mean of the halves'."""
    return (model(states, lengths).squeeze(1) * projection).sum(dim=1).mean()


def sync_worker(rank: int, world_size: int, address: str, output: str) -> None:
    """One DDP process: its half of the batch, one training step, results to ``output``."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    try:
        model = convert_sync_batchnorm(sync_test_model())
        states, lengths, projection = sync_test_batch()
        half = slice(2 * rank, 2 * rank + 2)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        sync_test_loss(ddp, states[:, half], lengths[half], projection[half]).backward()
        if rank == 0:
            torch.save(
                {"grads": {n: p.grad for n, p in model.named_parameters()},
                 "buffers": dict(model.named_buffers()),
                 "norms": [type(m).__name__ for m in model.modules() if isinstance(m, _BatchNorm)]},
                output,
            )
    finally:
        torch.distributed.destroy_process_group()


def test_convert_sync_batchnorm_keeps_state_and_is_a_plain_batchnorm_alone():
    """Every BatchNorm (LAP's folded input norm too) is converted with the same
    parameter and buffer objects; without a process group it computes what
    BatchNorm computes, in train and eval mode."""
    model, reference = sync_test_model(), sync_test_model()
    norms = [name for name, module in model.named_modules() if isinstance(module, torch.nn.BatchNorm1d)]
    weight = model.backend.lap.input_norm.weight
    assert convert_sync_batchnorm(model) is model and model.backend.lap.input_norm.weight is weight
    assert norms and all(isinstance(model.get_submodule(name), SyncBatchNorm) for name in norms)
    states, lengths, projection = sync_test_batch()
    for mode in (True, False):
        model.train(mode)
        reference.train(mode)
        for parameter in (*model.parameters(), *reference.parameters()):
            parameter.grad = None
        sync_test_loss(model, states, lengths, projection).backward()
        sync_test_loss(reference, states, lengths, projection).backward()
        for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(ours.grad, theirs.grad, msg=name)
        for (name, ours), theirs in zip(model.named_buffers(), reference.buffers()):
            torch.testing.assert_close(ours, theirs, msg=name)


def test_sync_batchnorm_two_gloo_processes_equal_one_process_on_the_whole_batch(tmp_path):
    """Two gloo processes, each on half of the batch, under DDP: every BatchNorm's
    running statistics (LAP's folded input norm included) and every gradient
    (averaged by DDP; the layer in front of LAP checks the input gradient through
    the synchronised statistics) equal one process's on the concatenated batch."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = tmp_path / "rank0.pt"
    torch.multiprocessing.spawn(
        sync_worker, args=(2, f"tcp://127.0.0.1:{port}", str(output)), nprocs=2, join=True
    )
    synced = torch.load(output)
    assert set(synced["norms"]) == {"SyncBatchNorm"}

    model = sync_test_model()
    sync_test_loss(model, *sync_test_batch()).backward()
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(synced["buffers"][name], buffer, rtol=1e-5, atol=1e-8, msg=name)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(synced["grads"][name], parameter.grad, rtol=1e-5, atol=1e-8, msg=name)
    # Not vacuous: the statistics moved, and gradients reach the layer in front of LAP.
    assert int(model.backend.lap.input_norm.num_batches_tracked) == 1
    assert float(model.front.weight.grad.abs().max()) > 0
