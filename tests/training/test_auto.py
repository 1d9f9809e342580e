import pytest

from headstart.training.auto import FEW_PER_CLASS, LARGE, AutoChoice, choose_strategy, full_epochs, steps_per_epoch


def test_few_labels_per_class_get_a_linear_probe_without_a_learning_rate():
    choice = choose_strategy([FEW_PER_CLASS - 1] * 10)
    assert (choice.strategy, choice.epochs, choice.lr, choice.lr_decay) == ("linear-probe", 1, None, None)
    assert "learning rate" not in choice.reason


def test_enough_labels_per_class_train_everything_without_layer_decay():
    choice = choose_strategy([FEW_PER_CLASS] * 10)
    assert (choice.strategy, choice.lr_decay, choice.lr) == ("full", None, 1e-3)
    assert choice.epochs == full_epochs(10 * FEW_PER_CLASS) == 15  # 7 steps an epoch: 300 steps would be 43 epochs


def test_large_sets_get_layer_wise_decay_and_a_longer_schedule():
    choice = choose_strategy([LARGE // 10] * 10)
    assert (choice.strategy, choice.lr_decay) == ("full", 0.75)
    assert choice.epochs == 5  # 625 steps an epoch, 3,000 steps
    assert "layer-wise learning-rate decay 0.75" in choice.reason


def test_a_skewed_set_is_counted_by_its_median_class_not_its_mean():
    counts = [200, 200] + [5] * 8  # mean 44 per class, but 8 of the 10 classes have 5 labels
    assert sum(counts) / len(counts) >= FEW_PER_CLASS
    choice = choose_strategy(counts)
    assert choice.strategy == "linear-probe"
    assert "median 5, smallest 5" in choice.reason


def test_one_rare_class_does_not_deny_fine_tuning_to_a_set_with_plenty():
    assert choose_strategy([500] * 9 + [3]).strategy == "full"


def test_half_the_classes_under_the_threshold_get_the_probe():
    assert choose_strategy([200] * 5 + [5] * 5).strategy == "linear-probe"  # the low median is 5


def test_world_size_shortens_epochs_and_lengthens_the_schedule():
    assert steps_per_epoch(1000, 32, 1) == 32
    assert steps_per_epoch(1000, 32, 4) == 8  # ceil(1,000 / 128)
    counts = [100] * 10
    one, four = choose_strategy(counts, 32, 1), choose_strategy(counts, 32, 4)
    assert (one.epochs, four.epochs) == (10, 15)  # ceil(300 / 32) = 10; ceil(300 / 8) = 38 -> at most 15
    assert "up to 10 epochs (320 steps of 32;" in one.reason
    assert "up to 15 epochs (120 steps of 32 x 4 processes;" in four.reason


def test_explicit_epochs_win_and_the_reason_says_what_will_run():
    choice = choose_strategy([48, 48], 32, epochs=3)  # 96 images, 3 steps an epoch
    assert (choice.strategy, choice.epochs) == ("full", 3)
    assert "up to 3 epochs (9 steps of 32; epochs given)" in choice.reason
    assert "15 epochs" not in choice.reason and "300" not in choice.reason


def test_explicit_epochs_under_ddp_count_steps_per_process_batch():
    choice = choose_strategy([48, 48], 32, 2, epochs=3)  # ceil(96 / 64) = 2 steps an epoch
    assert "up to 3 epochs (6 steps of 32 x 2 processes; epochs given)" in choice.reason


def test_explicit_lr_and_lr_decay_win_and_are_named():
    choice = choose_strategy([50] * 4, 64, lr=3e-4, lr_decay=0.8)
    assert (choice.lr, choice.lr_decay) == (3e-4, 0.8)
    assert "head learning rate 0.0003 (given)" in choice.reason and "decay 0.8 given" in choice.reason
    large = choose_strategy([LARGE] * 2, lr_decay=0.9)
    assert large.lr_decay == 0.9 and "decay 0.9 (given)" in large.reason


def test_the_learning_rate_scales_with_the_square_root_of_the_batch():
    assert choose_strategy([50] * 4, 128).lr == 2e-3


def test_a_probe_keeps_an_explicit_lr_but_says_given_epochs_do_not_apply():
    choice = choose_strategy([5] * 10, epochs=7, lr=1e-2)
    assert (choice.strategy, choice.epochs, choice.lr) == ("linear-probe", 1, 1e-2)
    assert "epochs given do not apply" in choice.reason and "learning rate" not in choice.reason


def test_the_choice_is_recorded_as_a_plain_dict():
    d = choose_strategy([30] * 3).to_dict()
    assert set(d) == {"strategy", "epochs", "lr_decay", "reason", "lr"}
    assert AutoChoice(**d) == choose_strategy([30] * 3)


@pytest.mark.parametrize("counts, kwargs", [([], {}), ([0, 0], {}), ([5, -1], {}), ([30], {"epochs": 0}),
                                            ([30], {"world_size": 0})])
def test_bad_input_is_a_value_error(counts, kwargs):
    with pytest.raises(ValueError):
        choose_strategy(counts, **kwargs)
