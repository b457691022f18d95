"""Task-graph parsing from real Nx output (fixtures written by Nx 23.3.2 and 24.0.6 for the same workspace)."""

import json
from pathlib import Path

import pytest

from nxfarm.probe.task_graph import TaskGraphError, parse_task_graph

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nx"


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*-diamond.graph.json")), ids=lambda p: p.name)
def test_both_edge_formats_give_the_same_graph(fixture):
    graph = parse_task_graph(json.loads(fixture.read_text()))
    assert graph.levels() == [["lib-a:build"], ["lib-b:build", "lib-c:build"], ["lib-d:build"], ["app:build"]]
    assert graph.dependencies["app:build"] == ("lib-d:build", "lib-c:build")
    assert graph.tasks["lib-b:build"].outputs == ("libs/lib-b/dist",)
    assert graph.tasks["app:build"].project_root == "apps/app"
    assert graph.distributable() == set(graph.tasks)


def test_the_two_fixtures_really_differ_in_edge_format():
    old, new = (json.loads((FIXTURES / f"nx{v}-diamond.graph.json").read_text()) for v in (23, 24))
    assert old["tasks"]["dependencies"]["lib-b:build"] == ["lib-a:build"]
    assert new["tasks"]["dependencies"]["lib-b:build"] == [{"id": "lib-a:build"}]


def _doc(tasks, deps):
    return {"tasks": {t: {"id": t, "target": {"project": t.split(":")[0], "target": t.split(":")[1]}, **extra}
                      for t, extra in tasks.items()}, "dependencies": deps}


def test_non_cacheable_and_continuous_tasks_stay_local():
    graph = parse_task_graph(_doc({"a:build": {"cache": True}, "a:serve": {"cache": False, "continuous": True},
                                   "a:deploy": {"cache": False}}, {"a:build": [], "a:serve": [], "a:deploy": ["a:build"]}))
    assert graph.distributable() == {"a:build"}
    assert graph.levels() == [["a:build", "a:serve"], ["a:deploy"]]


@pytest.mark.parametrize("document, message", [
    ({"graph": {}}, "expected 'tasks' and 'dependencies'"),
    (_doc({"a:b": {}}, {"a:b": ["x:y"]}), "dependencies['a:b']: unknown task(s) x:y"),
    (_doc({"a:b": {}}, {"a:b": [], "z:z": []}), "dependencies for unknown task(s) z:z"),
    (_doc({"a:b": {}}, {"a:b": [7]}), "neither a task id"),
    ({"tasks": {"a:b": {"id": "a:b"}}, "dependencies": {}}, "tasks['a:b']: expected an object with a 'target'"),
])
def test_malformed_graphs_name_the_problem(document, message):
    with pytest.raises(TaskGraphError) as info:
        parse_task_graph(document)
    assert message in str(info.value)


def test_a_cycle_is_reported_with_its_tasks():
    graph = parse_task_graph(_doc({"a:b": {}, "c:d": {}, "e:f": {}}, {"a:b": ["c:d"], "c:d": ["a:b"], "e:f": []}))
    with pytest.raises(TaskGraphError, match="dependency cycle among a:b, c:d"):
        graph.levels()
