import numpy as np
import pytest
import torch

from semflow_pipeline import SemFlowScheduler


def integrate(scheduler, model, x, steps, direction):
    scheduler.set_timesteps(steps, direction=direction)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 5, 25])
def test_timesteps_run_from_the_start_end_in_call_order(steps):
    s = SemFlowScheduler()
    s.set_timesteps(steps, direction="segment")
    assert len(s.timesteps) == steps
    assert s.timesteps[0] == 0 and torch.all(s.timesteps.diff() > 0)
    assert s.time_grid[0] == 0 and s.time_grid[-1] == 1
    s.set_timesteps(steps, direction="synthesize")
    assert len(s.timesteps) == steps
    assert s.timesteps[0] == 1000 and torch.all(s.timesteps.diff() < 0)
    assert s.time_grid[0] == 1 and s.time_grid[-1] == 0


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_heun_calls_the_network_twice_per_step(steps):
    s = SemFlowScheduler(solver="heun")
    s.set_timesteps(steps)
    assert len(s.timesteps) == 2 * steps


def test_bad_arguments_are_refused():
    s = SemFlowScheduler()
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="direction"):
        s.set_timesteps(2, direction="sideways")
    with pytest.raises(ValueError, match="prediction_type"):
        SemFlowScheduler(prediction_type="epsilon")
    with pytest.raises(ValueError, match="set_timesteps"):
        SemFlowScheduler().step(torch.zeros(1), 0, torch.zeros(1))


def test_config_save_load_round_trip(tmp_path):
    s = SemFlowScheduler(prediction_type="endpoints", solver="heun")
    s.save_pretrained(tmp_path)
    loaded = SemFlowScheduler.from_pretrained(tmp_path)
    keys = ("num_train_timesteps", "prediction_type", "solver")
    assert {k: loaded.config[k] for k in keys} == {"num_train_timesteps": 1000, "prediction_type": "endpoints",
                                                  "solver": "heun"}
    assert SemFlowScheduler.from_config(s.config).config.solver == "heun"


def test_diffusers_scheduler_api():
    s = SemFlowScheduler()
    x = torch.randn(2, 3, 4, 4)
    assert s.init_noise_sigma == 1.0
    assert torch.equal(s.scale_model_input(x, 0), x)
    s.set_timesteps(3)
    a = s.step(x, s.timesteps[0], x).prev_sample
    s.set_timesteps(3)
    (b,) = s.step(x, s.timesteps[0], x, return_dict=False)
    assert torch.equal(a, b)


def test_add_noise_builds_the_straight_path_and_targets():
    image, mask = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s = SemFlowScheduler()
    t = torch.tensor([0.0, 1000.0])
    x = s.add_noise(image, mask, t)
    assert torch.equal(x[0], image[0]) and torch.equal(x[1], mask[1])
    mid = s.add_noise(image, mask, torch.tensor([250.0, 250.0]))
    torch.testing.assert_close(mid, 0.25 * mask + 0.75 * image)
    torch.testing.assert_close(s.get_target(image, mask), mask - image)
    e = SemFlowScheduler(prediction_type="endpoints").get_target(image, mask)
    assert e.shape[1] == 6 and torch.equal(e[:, :3], mask) and torch.equal(e[:, 3:], image)


@pytest.mark.parametrize("prediction_type", ["velocity", "endpoints"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 3, 25])
def test_oracle_model_reaches_the_other_end_exactly(prediction_type, solver, steps):
    image, mask = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)

    def oracle(x, timestep):
        return mask - image if prediction_type == "velocity" else torch.cat([mask, image], 1)

    s = SemFlowScheduler(prediction_type=prediction_type, solver=solver)
    torch.testing.assert_close(integrate(s, oracle, image.clone(), steps, "segment"), mask, atol=1e-5, rtol=0)
    torch.testing.assert_close(integrate(s, oracle, mask.clone(), steps, "synthesize"), image, atol=1e-5, rtol=0)


def test_one_endpoint_step_returns_the_predicted_mask_exactly():
    x0, mask_hat, image_hat = torch.randn(3, 1, 4, 4).unbind(0)
    s = SemFlowScheduler(prediction_type="endpoints")
    out = integrate(s, lambda x, t: torch.cat([mask_hat, image_hat], 1), x0.clone(), 1, "segment")
    assert torch.equal(out, mask_hat)


def test_heun_is_second_order():
    # dx/dt = 2t (a velocity that changes along the path): Heun's trapezoid rule is exact, Euler is not.
    def field(x, timestep):
        return torch.full_like(x, 2 * float(timestep) / 1000)

    x0 = torch.zeros(1, 1, 1, 1)
    heun = integrate(SemFlowScheduler(solver="heun"), field, x0, 2, "segment")
    euler = integrate(SemFlowScheduler(), field, x0, 4, "segment")  # the same 4 network calls
    assert abs(float(heun) - 1.0) < 1e-6
    assert abs(float(euler) - 1.0) > 0.2


# ----------------------------------------------------------------------- diffusers' scheduler conventions
def test_mixed_precision_step_computes_in_float32_and_keeps_the_state_dtype():
    x = torch.randn(1, 3, 4, 4)
    out = torch.randn(1, 6, 4, 4)
    s = SemFlowScheduler(prediction_type="endpoints")
    s.set_timesteps(4)
    reference = s.step(out, s.timesteps[0], x).prev_sample
    s.set_timesteps(4)
    mixed = s.step(out.bfloat16(), s.timesteps[0], x).prev_sample  # an fp32 state fed by a bf16 network
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, atol=0.05, rtol=0.05)
    s.set_timesteps(4)
    low = s.step(out, s.timesteps[0], x.bfloat16()).prev_sample
    assert low.dtype == torch.bfloat16


@pytest.mark.parametrize("steps", [np.int64(4), np.int32(4), torch.tensor(4), 4])
def test_any_integer_is_a_step_count(steps):
    s = SemFlowScheduler()
    s.set_timesteps(steps)
    assert s.num_inference_steps == 4 and type(s.num_inference_steps) is int and len(s.timesteps) == 4


@pytest.mark.parametrize("steps", [4.0, True, np.float32(4), "4", -1])
def test_non_integer_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        SemFlowScheduler().set_timesteps(steps)


def test_step_index_and_begin_index():
    s = SemFlowScheduler()
    s.set_timesteps(4)
    assert s.step_index is None and s.begin_index is None
    x = torch.zeros(1, 3, 2, 2)
    s.step(x, s.timesteps[0], x)
    assert s.step_index == 1
    s.set_timesteps(4)
    s.set_begin_index(2)
    assert s.begin_index == 2
    s.step(x, s.timesteps[2], x)
    assert s.step_index == 3
    with pytest.raises(ValueError, match="begin_index"):
        s.set_begin_index(9)
    h = SemFlowScheduler(solver="heun")
    h.set_timesteps(3)
    with pytest.raises(ValueError, match="even"):
        h.set_begin_index(1)


def test_step_finds_its_place_from_the_timestep_argument():
    # Start half-way without set_begin_index: the timestep alone says where the step is.
    image, mask = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    s = SemFlowScheduler()
    s.set_timesteps(4)
    x_half = 0.5 * mask + 0.5 * image
    out = s.step(mask - image, s.timesteps[2], x_half).prev_sample
    assert s.step_index == 3
    torch.testing.assert_close(out, 0.75 * mask + 0.25 * image)
    # Jumping back re-locates too, instead of trusting the counter.
    s.step(mask - image, s.timesteps[1], x_half)
    assert s.step_index == 2
    with pytest.raises(ValueError, match="not in this schedule"):
        s.step(mask - image, 123.0, x_half)


def test_heun_tells_predictor_and_corrector_apart_at_the_same_time():
    s = SemFlowScheduler(solver="heun")
    s.set_timesteps(2)  # timesteps 0, 500, 500, 1000
    x = torch.zeros(1, 1, 1, 1)
    v = torch.ones(1, 1, 1, 1)
    s.step(v, s.timesteps[0], x)
    s.step(v, 500.0, x)  # with a predictor pending, t = 500 is its corrector
    assert s.step_index == 2
    s.set_timesteps(2)
    with pytest.raises(ValueError, match="corrector"):
        s.step(v, s.timesteps[3], x)  # t = 1000 only appears as a corrector


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("direction,sigmas", [("segment", [0.0, 0.1, 0.5, 0.9]), ("synthesize", [1.0, 0.7, 0.2])])
def test_custom_schedules_follow_the_direction_and_reach_the_other_end(solver, direction, sigmas):
    image, mask = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    for kwargs in (dict(sigmas=sigmas), dict(timesteps=[1000 * t for t in sigmas])):
        s = SemFlowScheduler(prediction_type="endpoints", solver=solver)
        s.set_timesteps(direction=direction, **kwargs)
        assert s.num_inference_steps == len(sigmas)
        assert s.time_grid[-1] == (1.0 if direction == "segment" else 0.0)
        x = image.clone() if direction == "segment" else mask.clone()
        for t in s.timesteps:
            x = s.step(torch.cat([mask, image], 1), t, x).prev_sample
        torch.testing.assert_close(x, mask if direction == "segment" else image, atol=1e-5, rtol=0)


def test_diffusers_retrieve_timesteps_drives_the_scheduler():
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    s = SemFlowScheduler()
    timesteps, n = retrieve_timesteps(s, sigmas=[0.0, 0.25, 0.6], direction="segment")
    assert n == 3 and timesteps.tolist() == [0.0, 250.0, 600.0]
    timesteps, n = retrieve_timesteps(s, timesteps=[1000, 400], direction="synthesize")
    assert n == 2 and s.time_grid.tolist() == pytest.approx([1.0, 0.4, 0.0])
    timesteps, n = retrieve_timesteps(s, np.int64(5), direction="synthesize")
    assert len(timesteps) == 5


def test_starting_a_custom_schedule_mid_way_integrates_from_that_state():
    image, mask = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    s = SemFlowScheduler()
    s.set_timesteps(sigmas=[0.5, 0.75])
    x = 0.5 * mask + 0.5 * image
    for t in s.timesteps:
        x = s.step(mask - image, t, x).prev_sample
    torch.testing.assert_close(x, mask)


@pytest.mark.parametrize("kwargs,message", [
    (dict(sigmas=[0.5, 0.2]), "direction='synthesize'"),
    (dict(sigmas=[0.2, 0.5], direction="synthesize"), "direction='segment'"),
    (dict(sigmas=[0.0, 0.5, 1.0]), "leave it out"),
    (dict(sigmas=[0.0, 1.5]), r"\[0, 1\]"),
    (dict(timesteps=[0, 2000]), "network units"),
    (dict(sigmas=[0.0, 0.5], timesteps=[0, 500]), "only one"),
    (dict(sigmas=[0.0, 0.5], num_inference_steps=3), "length"),
    (dict(sigmas=[]), "non-empty"),
    (dict(sigmas=[0.0, float("nan")]), "finite"),
    (dict(), "num_inference_steps"),
])
def test_bad_custom_schedules_are_explained(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SemFlowScheduler().set_timesteps(**kwargs)


def test_wrong_channel_counts_say_what_the_prediction_type_needs():
    x = torch.zeros(1, 3, 4, 4)
    s = SemFlowScheduler(prediction_type="endpoints")
    s.set_timesteps(2)
    with pytest.raises(ValueError, match=r"2C = 6 channels.*got 3"):
        s.step(torch.zeros(1, 3, 4, 4), s.timesteps[0], x)
    v = SemFlowScheduler(prediction_type="velocity")
    v.set_timesteps(2)
    with pytest.raises(ValueError, match="prediction_type='endpoints'"):
        v.step(torch.zeros(1, 6, 4, 4), v.timesteps[0], x)


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("direction", ["segment", "synthesize"])
def test_a_step_after_the_last_timestep_is_a_clear_error(solver, direction):
    # Issue 17 item 17: it used to return another result, as if there were a time after the end.
    s = SemFlowScheduler(solver=solver)
    s.set_timesteps(2, direction=direction)
    x = v = torch.ones(1, 3, 2, 2)
    for t in s.timesteps:
        x = s.step(v, t, x).prev_sample
    with pytest.raises(ValueError, match="integration is finished.*set_timesteps"):
        s.step(v, s.timesteps[-1], x)
    with pytest.raises(ValueError, match="integration is finished"):
        s.step(v, s.timesteps[0], x)
    s.set_timesteps(2, direction=direction)  # a new integration starts
    assert s.step(v, s.timesteps[0], x).prev_sample.shape == x.shape


def test_stochastic_sampling_restarts_each_synthesis_step_from_the_predicted_image_and_fresh_noise():
    image_hat, mask_hat = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    out = torch.cat([mask_hat, image_hat], 1)
    s = SemFlowScheduler(prediction_type="endpoints", stochastic_sampling=True)
    s.set_timesteps(4, direction="synthesize")  # t: 1, 0.75, 0.5, 0.25 -> 0
    x, noise = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    x = s.step(out, s.timesteps[0], x, noise=noise).prev_sample
    torch.testing.assert_close(x, 0.25 * image_hat + 0.75 * noise)
    # Without the flag the same step keeps the state's own noise: a different state.
    d = SemFlowScheduler(prediction_type="endpoints")
    d.set_timesteps(4, direction="synthesize")
    assert not torch.allclose(d.step(out, d.timesteps[0], torch.randn(1, 4, 6, 6)).prev_sample, x)
    with pytest.raises(ValueError, match="noise"):
        s.step(out, s.timesteps[1], x)  # a middle step needs its fresh draw
    with pytest.raises(ValueError, match="shape"):
        s.step(out, s.timesteps[1], x, noise=torch.randn(1, 4, 3, 3))
    for t in s.timesteps[1:3]:
        x = s.step(out, t, x, noise=noise).prev_sample
    torch.testing.assert_close(s.step(out, s.timesteps[3], x).prev_sample, image_hat)  # the last lands on image_hat


def test_stochastic_sampling_leaves_segmentation_deterministic_and_needs_endpoints_euler():
    image, mask = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    oracle = lambda x, t: torch.cat([mask, image], 1)  # noqa: E731
    s = SemFlowScheduler(prediction_type="endpoints", stochastic_sampling=True)
    torch.testing.assert_close(integrate(s, oracle, image.clone(), 3, "segment"), mask)
    with pytest.raises(ValueError, match="endpoints"):
        SemFlowScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match="euler"):
        SemFlowScheduler(prediction_type="endpoints", solver="heun", stochastic_sampling=True)
