"""Which channel of a stereo dialogue is the user and which the system.

s2s writes the user on channel 0 and the system on channel 1 (its manifests and corpus.json say so:
`"channels": ["user", "system"]`). Recordings from elsewhere follow their own convention (moshi-finetune
puts the system on the left), and a stereo wav does not say which is which: trained with the roles
swapped, a model learns to answer itself. So a folder must state its roles, in its corpus.json, in
s2s manifests beside every dialogue, or in the `channels` setting; nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from s2s.data.manifest import SYSTEM, USER

FIX = (
    "say which is which with data.channels={user: 0, system: 1} (s2s's layout: the user on the left) or "
    "data.channels={user: 1, system: 0} (moshi-finetune's: the system on the left); "
    "`python -m s2s.data.moshi_layout SRC DST` converts a moshi-finetune folder, labels and all"
)


class ChannelError(ValueError):
    """Channel roles that are missing, malformed, or contradict what the data records."""


@dataclass(frozen=True)
class ChannelRoles:
    """The channel index (0 = left, 1 = right) of the user and of the system."""

    user: int = 0
    system: int = 1

    def __post_init__(self):
        if {self.user, self.system} != {0, 1} or not all(type(c) is int for c in (self.user, self.system)):
            raise ChannelError(
                f"channels must put the user and the system on channels 0 and 1, one each; got "
                f"user={self.user!r}, system={self.system!r}; {FIX}"
            )

    @classmethod
    def parse(cls, value: ChannelRoles | Mapping | Sequence | None) -> ChannelRoles | None:
        """From a config mapping ({user: 0, system: 1}) or a record's list of names per channel
        (["user", "system"]); None stays None (the data must then say it)."""
        if value is None or isinstance(value, ChannelRoles):
            return value
        if isinstance(value, Mapping):
            if set(value) != {USER, SYSTEM}:
                raise ChannelError(
                    f"channels must name exactly {USER!r} and {SYSTEM!r}, got {dict(value)}; {FIX}"
                )
            return cls(user=value[USER], system=value[SYSTEM])
        if isinstance(value, Sequence) and not isinstance(value, str) and sorted(value) == [SYSTEM, USER]:
            return cls(user=list(value).index(USER), system=list(value).index(SYSTEM))
        raise ChannelError(f"channels must be {{user: <0 or 1>, system: <0 or 1>}}, got {value!r}; {FIX}")

    @property
    def names(self) -> list[str]:
        """The role of each channel, in channel order (what corpus.json records)."""
        return [USER, SYSTEM] if self.user == 0 else [SYSTEM, USER]

    def describe(self) -> str:
        return f"{{user: {self.user}, system: {self.system}}}"


S2S_LAYOUT = ChannelRoles(user=0, system=1)


def resolve_roles(
    where: str,
    setting: ChannelRoles | Mapping | Sequence | None,
    recorded: ChannelRoles | None,
    recorded_by: str = "",
) -> ChannelRoles:
    """The roles to read `where` with: the setting, or what the data records; both must agree.

    `recorded`: the roles the data itself states (corpus.json, or s2s manifests), None when it states
    none; `recorded_by` names that source for the error message.
    """
    setting = ChannelRoles.parse(setting)
    if setting is not None and recorded is not None and setting != recorded:
        raise ChannelError(
            f"data.channels={setting.describe()} contradicts {recorded_by}, which records "
            f"{recorded.describe()} for {where}; drop data.channels (the data says it) or fix {recorded_by}"
        )
    roles = setting or recorded
    if roles is None:
        raise ChannelError(
            f"nothing says which channel of the dialogues in {where} is the user and which the system "
            f"(no corpus.json naming them, no s2s manifest beside every dialogue); {FIX}"
        )
    return roles
