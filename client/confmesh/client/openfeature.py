"""An OpenFeature provider backed by a running ConfigClient (needs ``openfeature-sdk``).

    from openfeature import api
    from confmesh.client.openfeature import ConfmeshProvider

    async with ConfigClient(addr, environment="prod", service="orders") as client:
        api.set_provider(ConfmeshProvider(client))
        flags = api.get_client()
        flags.get_boolean_value("new-checkout", False, EvaluationContext("user-42", {"tier": "premium"}))

Evaluation is confmesh's local evaluator; the OpenFeature evaluation context
becomes ``{"targetingKey": targeting_key, **attributes}``. Provider events:
READY once the client has config, CONFIGURATION_CHANGED (with the changed
flag keys) on every applied snapshot that changes flags, STALE while the
client is disconnected, the server is stale or the config came from the
cache, ERROR when the client stopped on a fatal error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import (
    FlagNotFoundError,
    GeneralError,
    ParseError,
    TargetingKeyMissingError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from confmesh.client._client import ClientState, ConfigClient
from confmesh.flags import ErrorCode, EvaluationDetails, FlagEvaluator

_ERRORS: dict[ErrorCode, type[Exception]] = {
    ErrorCode.FLAG_NOT_FOUND: FlagNotFoundError,
    ErrorCode.TYPE_MISMATCH: TypeMismatchError,
    ErrorCode.PARSE_ERROR: ParseError,
    ErrorCode.TARGETING_KEY_MISSING: TargetingKeyMissingError,
    ErrorCode.GENERAL: GeneralError,
}


def to_context(ctx: EvaluationContext | None) -> dict[str, Any]:
    if ctx is None:
        return {}
    out = dict(ctx.attributes)
    if ctx.targeting_key is not None:
        out["targetingKey"] = ctx.targeting_key
    return out


class ConfmeshProvider(AbstractProvider):
    def __init__(self, client: ConfigClient[Any]) -> None:
        super().__init__()
        self.client = client
        self._flags = client.flags.flag_set.flags
        self._unsubscribe: list[Callable[[], None]] = []

    def get_metadata(self) -> Metadata:
        return Metadata(name="confmesh")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        self._unsubscribe = [self.client.on_change(self._changed), self.client.on_state(self._state)]
        if self.client.state is ClientState.STALE:
            self.emit_provider_stale(ProviderEventDetails(message="serving cached or stale config"))

    def shutdown(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _changed(self, _old: Any, _new: Any) -> None:
        flags = self.client.flags.flag_set.flags
        changed = sorted(k for k in flags.keys() | self._flags.keys() if flags.get(k) != self._flags.get(k))
        self._flags = flags
        if changed:
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=changed, metadata={"version": self.client.version})
            )

    def _state(self, state: ClientState) -> None:
        if state is ClientState.READY:
            self.emit_provider_ready(ProviderEventDetails())
        elif state is ClientState.STALE:
            self.emit_provider_stale(ProviderEventDetails(message="disconnected, stale or cached config"))
        elif state is ClientState.ERROR:
            self.emit_provider_error(ProviderEventDetails(message="the confmesh client stopped on an error"))

    def _resolve(self, getter: Callable[[FlagEvaluator], EvaluationDetails]) -> FlagResolutionDetails[Any]:
        d = getter(self.client.flags)
        if d.error_code is not None:
            raise _ERRORS.get(d.error_code, GeneralError)(d.error_message)
        reason: str | Reason = Reason(d.reason) if d.reason in Reason.__members__ else str(d.reason)
        # The flag's own metadata (flagd's flag and flag-set metadata) wins over confmesh's keys.
        metadata: dict[str, bool | int | float | str] = {
            "version": d.flag_version,
            "environment": self.client.scope.environment,
        }
        if d.rule:
            metadata["rule"] = d.rule
        metadata.update(d.metadata)
        return FlagResolutionDetails(value=d.value, reason=reason, variant=d.variant, flag_metadata=metadata)

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        ctx = to_context(evaluation_context)
        return self._resolve(lambda ev: ev.get_bool_details(flag_key, default_value, ctx))

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        ctx = to_context(evaluation_context)
        return self._resolve(lambda ev: ev.get_str_details(flag_key, default_value, ctx))

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        ctx = to_context(evaluation_context)
        return self._resolve(lambda ev: ev.get_int_details(flag_key, default_value, ctx))

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        ctx = to_context(evaluation_context)
        return self._resolve(lambda ev: ev.get_float_details(flag_key, default_value, ctx))

    def resolve_object_details(  # type: ignore[override]
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Any]:
        ctx = to_context(evaluation_context)
        return self._resolve(lambda ev: ev.get_object_details(flag_key, default_value, ctx))


__all__ = [
    "ConfmeshProvider",
    "to_context",
]
