"""The contextual-bandit experiment: the Conductor learns each cluster's emphasis."""

from maestro_megatron.demos.bandit import BanditSetup, run_bandit


def test_conductor_learns_per_cluster_emphasis():
    result = run_bandit(BanditSetup(seed=0))
    assert all(p >= 0.6 for p in result["p_best"]), result["p_best"]
    for uc, ue in zip(result["utility_conductor"], result["utility_equal"]):
        assert uc > ue + 0.15, (uc, ue)


def test_untrained_conductor_is_not_better_than_equal():
    result = run_bandit(BanditSetup(seed=0, num_steps=0))
    assert all(abs(p - 0.2) < 1e-6 for p in result["p_best"])
    for uc, ue in zip(result["utility_conductor"], result["utility_equal"]):
        assert abs(uc - ue) < 1e-6
