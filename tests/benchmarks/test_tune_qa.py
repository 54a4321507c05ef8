"""benchmarks/tune_qa.py's choice of step size: by the final validation loss, or by the final validation metric
(greedy F1 / accuracy), which can disagree (a teacher-forced answer NLL can fall while decoding gets worse)."""


def curve(*points):
    return [{"step": 100 * (k + 1), **p} for k, p in enumerate(points)]


CURVES = {
    "0.01": curve({"val_loss": 2.70, "val_f1": 0.075}, {"val_loss": 2.57, "val_f1": 0.069}),
    "0.03": curve({"val_loss": 2.58, "val_f1": 0.041}, {"val_loss": 2.50, "val_f1": 0.076}),
    "0.1": curve({"val_loss": 2.40, "val_f1": 0.030}, {"val_loss": 2.45, "val_f1": 0.020}),
}


def test_the_loss_criterion_takes_the_lowest_final_loss_and_the_metric_criterion_the_highest_final_metric(tune_qa):
    assert tune_qa.chosen_lr(CURVES, "loss", "val_f1") == "0.1"  # 2.45 is the lowest *final* loss (not 2.40)
    assert tune_qa.chosen_lr(CURVES, "metric", "val_f1") == "0.03"


def test_ties_to_four_decimals_go_to_the_smaller_step(tune_qa):
    tied = {"0.03": curve({"val_loss": 2.50001, "val_accuracy": 0.5}),
            "0.01": curve({"val_loss": 2.5, "val_accuracy": 0.5})}
    assert tune_qa.chosen_lr(tied, "loss", "val_accuracy") == "0.01"
    assert tune_qa.chosen_lr(tied, "metric", "val_accuracy") == "0.01"
