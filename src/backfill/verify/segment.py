"""Reading a Unify space back through the Profile API, for the proof of landing and reconcile.

A Segment person has no profile ID the plan could know: they are read by the identifier their
events were keyed on, the job's first one they have (``new:user_id c-42`` is read at
``.../profiles/user_id:c-42/traits``). The read asks only for the job's traits (``include``,
when the list fits a URL) and follows the ``next`` cursor until ``has_more`` is false.

The answer is shaped as a Memory profile's traits, under one group named ``""`` (Segment's
traits are flat), so ``verify.compare`` compares both stores with one set of rules.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from backfill.config import Job
from backfill.plan.resolve import NEW

TRAITS_PAGE: Final = 100  # traits a page: the generic pagination table's most (segment-api.md, 2)
MAX_INCLUDE: Final = 2_000  # characters of ``include``; past it, every trait is read
MAX_PAGES: Final = 1_000  # a cursor that never ends must not hang a read-back


def address(target: str) -> str:
    """``new:<type> <value>`` -> ``<type>:<value>``, the Profile API's way to name a person."""
    id_type, _, value = target.removeprefix(NEW).partition(" ")
    return f"{id_type}:{value}"


def traits_path(space_id: str, person: str) -> str:
    """The traits route of ``person`` (``type:value``; the value URL-encoded, ``+`` as %2B)."""
    id_type, _, value = person.partition(":")
    return (f"/v1/spaces/{quote(space_id, safe='')}/collections/users/profiles/"
            f"{quote(id_type, safe='')}:{quote(value, safe='')}/traits")  # fmt: skip


def include(job: Job) -> str | None:
    """The ``include`` parameter naming the job's traits, or None (every trait is read, the
    rest ignored) when it would be too long or a name holds the separator."""
    names = list(dict.fromkeys(t.trait for t in job.traits))
    joined = ",".join(names)
    if len(joined) > MAX_INCLUDE or any("," in name for name in names):
        return None
    return joined
