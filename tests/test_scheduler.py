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
