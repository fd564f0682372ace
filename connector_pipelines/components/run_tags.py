"""The ``connector/*`` run tags that find every run of a pair in the UI's run list.

Every job a pair defines carries its stable tags as job tags (``connector/integration``, ``/source``,
``/target``, ``/trigger``), so a run of it has them however it is launched: by a sensor, a schedule or
the job's launchpad. A run of the pair's *assets* launched from the asset pages (Materialize, a
backfill, a check's Execute) runs on Dagster's implicit asset job, which has no tags of ours: its
steps add the pair's tags to their run when they start (``connector/trigger=manual``: nothing else
launches the implicit job here). A run that already has a tag (its job's, or one a person added at
launch) keeps it, and a run over assets of several pairs is tagged by the first one that starts.
"""

import dagster as dg

INTEGRATION, SOURCE, TARGET, TRIGGER = ("connector/integration", "connector/source", "connector/target",
                                        "connector/trigger")
MANUAL = "manual"


def pair_tags(name: str, source: str, target: str) -> dict[str, str]:
    """The stable tags of every run of a pair (its jobs add ``connector/trigger``)."""
    return {INTEGRATION: name, SOURCE: source, TARGET: target}


def tag_run_of_pair(instance: dg.DagsterInstance, run_id: str, tags: dict[str, str]) -> None:
    """Give the run the pair's tags it lacks; a run another pair's step tagged first is left as it is."""
    run = instance.get_run_by_id(run_id)   # fresh: an earlier step of this run may have tagged it
    if run is None or INTEGRATION in run.tags:
        return
    instance.add_run_tags(run_id, {k: v for k, v in {**tags, TRIGGER: MANUAL}.items() if k not in run.tags})
