"""The demo tasks ship with the package, in the quickstart's order."""

from kfacel.demo import demo_tasks


def test_demo_tasks_ship_with_the_package() -> None:
    tasks = demo_tasks()
    assert [t.name for t in tasks] == ["mm-demo", "psytar-demo", "ncbi-demo"]
    for t in tasks:
        assert len(t.train) == 600
        assert len(t.dev) == 150
        assert len(t.test) == 1000
        assert all(len(ex.candidates) == 8 for ex in t.test)
