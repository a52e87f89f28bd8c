"""The step counts behind the analyses' progress bar: each plan equals the steps taken."""


from mim4dd_kit.core import progress as meter

SMALL = {"name": "convnet", "width": 8, "depth": 2}


class Recorder:
    def __init__(self):
        self.plans, self.done = [], 0

    def plan(self, steps, label):
        self.plans.append((label, steps))

    def advance(self, steps):
        self.done += steps


def test_without_a_sink_nothing_is_reported_and_plans_nest():
    sink = Recorder()
    meter.advance(5)  # no sink: ignored
    with meter.reporting(sink):
        with meter.planned(10, "outer"):
            with meter.planned(4, "inner"):
                meter.advance(3)
    meter.advance(2)
    assert sink.plans == [("outer", 10)] and sink.done == 3
