"""PolicyEngine: which policy serves, how it is (re)loaded, and the fail-closed decision wrapper.

Three states. `loaded`: a verified bundle serves. `defaults`: no policy is configured, the
built-in tier defaults serve, and `describe()` says so loudly. `refused`: a policy is configured
but did not verify; it is never replaced by the defaults and every decision is a deny with
`policy_unavailable` until a bundle that verifies appears on disk.

A reload that fails keeps the last verified version serving (the refusal is reported through
`on_event`). `decide()` takes a snapshot of the serving policy first, so a swap in the middle of a
call cannot mix two versions, and the Decision names the version that decided.

Shadow mode (`guard.policy: {bundle: ..., shadow: CANDIDATE}`): the candidate, signed and verified
like the live bundle (its version is not held against the rollback ledger: it serves nothing), is
decided beside the live policy on every call. `shadow_events` says where the two disagree, as a
`policy.shadow_disagreed` event for the pipeline to record with the decision; it never raises and
never changes the decision. A candidate that does not verify is reported (`policy.refused` with
`shadow: true`) and nothing is shadowed; one that fails on a call counts as the deny a live engine
would answer (`policy_engine_error`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from guard_mcp._audit import EventIn
from guard_mcp._config import GuardConfig
from guard_mcp._errors import GuardError, PolicyError, PolicyRefused
from guard_mcp._models import ActionBundle, ActionSchema, Decision, Effect, Risk, Tier, TraceEntry
from guard_mcp._policy._bundle import (
    VerifiedBundle,
    VersionLedger,
    load_trusted_keys,
    signature_path,
    verify_bundle,
)
from guard_mcp._policy._decision import (
    encode_request,
    pack_schema,
    parse_decision,
    request_dict,
    unpack_risk,
    with_bundle_facts,
)
from guard_mcp._policy._defaults import DEFAULTS_DESCRIPTION, defaults_bundle
from guard_mcp._policy._host import DEFAULT_FUEL, WasmEvaluator
from guard_mcp._state import StateDir

__all__ = ["SHADOW_EVENT", "EventSink", "PolicyEngine", "Status", "load_candidate", "load_verified"]

SHADOW_EVENT = "policy.shadow_disagreed"

Status = Literal["loaded", "defaults", "refused"]
EventSink = Callable[[str, dict[str, Any]], None]

# Used only when even the sandbox cannot score: the most cautious answer there is.
_WORST_RISK = Risk(score=100, tier=Tier.HIGH, factors={})


@dataclass(frozen=True)
class _Serving:
    evaluator: WasmEvaluator
    label: str
    sha256: str
    kid: str | None
    rules: int


def load_verified(
    path: Path, config: GuardConfig, state: StateDir, *, fuel: int = DEFAULT_FUEL, switching: bool = False
) -> tuple[VerifiedBundle, WasmEvaluator]:
    """Everything the guard does before serving `path`, without recording it as accepted.
    `switching`: a policy of another name than the one served may be loaded (`policy accept`)."""
    trusted = load_trusted_keys([config.resolve(p) for p in config.guard.trusted_policy_keys])
    verified = verify_bundle(path, trusted, ledger=VersionLedger(state), switching=switching)
    return verified, _evaluator(path, verified, state, fuel)


def load_candidate(
    path: Path, config: GuardConfig, state: StateDir, *, fuel: int = DEFAULT_FUEL
) -> tuple[VerifiedBundle, WasmEvaluator]:
    """A bundle that is decided with but never serves (shadow mode, `policy replay`): its signature is
    checked against `guard.trusted_policy_keys` as the live bundle's is; its name and version are not
    checked against the rollback ledger, since a what-if of an older version grants nothing."""
    trusted = load_trusted_keys([config.resolve(p) for p in config.guard.trusted_policy_keys])
    verified = verify_bundle(path, trusted, ledger=None)
    return verified, _evaluator(path, verified, state, fuel)


def _evaluator(path: Path, verified: VerifiedBundle, state: StateDir, fuel: int) -> WasmEvaluator:
    try:
        evaluator = WasmEvaluator(verified.data, verified.sha256, fuel=fuel, state=state)
    except PolicyError as exc:
        raise PolicyRefused(f"policy bundle `{path}` verified but does not load: {exc}", reason="malformed") from None
    if evaluator.label != verified.label:
        raise PolicyRefused(
            f"policy bundle `{path}` loaded as `{evaluator.label}`, not `{verified.label}`", reason="malformed"
        )
    return evaluator


def _differs(live: Decision, shadow: Decision) -> bool:
    """What would change for the caller: the effect, or who must approve and how."""
    return (live.effect, live.step_up, live.approvers) != (shadow.effect, shadow.step_up, shadow.approvers)


def decision_summary(decision: Decision) -> dict[str, Any]:
    """A decision as a shadow or replay record shows it: never an argument value (the trace is left out)."""
    return {
        "effect": decision.effect.value,
        "rule_id": decision.rule_id,
        "reason": decision.reason,
        "policy": decision.policy,
        "step_up": decision.step_up,
        "approvers": decision.approvers,
    }


def _fingerprint(path: Path, ledger: Path | None = None) -> tuple[tuple[int, int, int] | None, ...]:
    """What a reload looks at: the bundle, its signature, and the ledger (`policy accept` writes it)."""

    def one(p: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(p)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    return one(path), one(signature_path(path)), None if ledger is None else one(ledger)


class PolicyEngine:
    def __init__(
        self,
        config: GuardConfig,
        state: StateDir,
        *,
        on_event: EventSink | None = None,
        fuel: int = DEFAULT_FUEL,
    ) -> None:
        self._config = config
        self._state = state
        self._on_event = on_event
        self._fuel = fuel
        self._path = config.resolve(config.guard.policy) if config.guard.policy is not None else None
        shadow = config.guard.shadow_policy
        self._shadow_path = config.resolve(shadow) if shadow is not None else None
        self._shadow_seen: tuple[tuple[int, int, int] | None, ...] | None = None
        self._shadow: _Serving | None = None
        self._seen: tuple[tuple[int, int, int] | None, ...] | None = None
        self._serving: _Serving | None = None
        self._refusal: PolicyRefused | None = None
        self._scorer: WasmEvaluator | None = None
        self.status: Status = "refused"

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: GuardConfig,
        state: StateDir,
        *,
        on_event: EventSink | None = None,
        fuel: int = DEFAULT_FUEL,
    ) -> PolicyEngine:
        engine = cls(config, state, on_event=on_event, fuel=fuel)
        engine._start()
        return engine

    def _start(self) -> None:
        self._reload_shadow()
        try:
            data, digest = defaults_bundle()
            self._scorer = WasmEvaluator(data, digest, fuel=self._fuel, state=self._state)
        except GuardError as exc:
            self._scorer = None
            if self._path is None:
                self._refuse(PolicyRefused(f"the policy engine cannot start: {exc}", reason="engine_unavailable"))
                return
        if self._path is None:
            assert self._scorer is not None
            self._serving = _Serving(self._scorer, self._scorer.label, self._scorer.sha256, None, 0)
            self.status = "defaults"
            return
        self.reload_if_changed()

    # -- loading ---------------------------------------------------------------------------------

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(event, data)

    def _refuse(self, exc: PolicyRefused) -> None:
        self._refusal = exc
        serving = self._serving.label if self._serving is not None else None
        self._emit(
            "policy_refused",
            {
                "path": str(self._path) if self._path else None,
                "reason": exc.reason,
                "message": str(exc),
                "serving": serving,
            },
        )

    def _reload_shadow(self) -> None:
        """Verify and swap in the shadow candidate if it changed on disk; a broken one shadows nothing."""
        path = self._shadow_path
        if path is None:
            return
        seen = _fingerprint(path)
        if seen == self._shadow_seen:
            return
        self._shadow_seen = seen
        try:
            verified, evaluator = load_candidate(path, self._config, self._state, fuel=self._fuel)
        except GuardError as exc:
            reason = exc.reason if isinstance(exc, PolicyRefused) else "bad_trusted_key"
            self._shadow = None
            self._emit(
                "policy_refused",
                {
                    "path": str(path),
                    "reason": reason,
                    "message": str(exc),
                    "shadow": True,
                    "serving": self._serving.label if self._serving is not None else None,
                },
            )
            return
        if self._shadow is not None and self._shadow.sha256 == verified.sha256:
            return
        self._shadow = _Serving(evaluator, verified.label, verified.sha256, verified.kid, verified.rules)
        self._emit(
            "policy_loaded",
            {
                "path": str(path),
                "policy": verified.label,
                "name": verified.name,
                "version": verified.version,
                "sha256": verified.sha256,
                "kid": verified.kid,
                "rules": verified.rules,
                "shadow": True,
            },
        )

    def reload_if_changed(self) -> bool:
        """Verify and swap in the bundle on disk if it changed; True when a new version now serves."""
        self._reload_shadow()
        if self._path is None:
            return False
        seen = _fingerprint(self._path, VersionLedger(self._state).path)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            verified, evaluator = load_verified(self._path, self._config, self._state, fuel=self._fuel)
        except PolicyRefused as exc:
            self._refuse(exc)
            return False
        except GuardError as exc:
            reason = "bad_trusted_key" if isinstance(exc, PolicyError) else "state_error"
            self._refuse(PolicyRefused(str(exc), reason=reason))
            return False
        if self._serving is not None and self._serving.sha256 == verified.sha256:
            return False
        try:
            VersionLedger(self._state).record(verified)
        except GuardError as exc:
            self._refuse(PolicyRefused(str(exc), reason="state_error"))
            return False
        self._serving = _Serving(evaluator, verified.label, verified.sha256, verified.kid, verified.rules)
        self.status = "loaded"
        self._refusal = None
        self._emit(
            "policy_loaded",
            {
                "path": str(self._path),
                "policy": verified.label,
                "name": verified.name,
                "version": verified.version,
                "sha256": verified.sha256,
                "kid": verified.kid,
                "rules": verified.rules,
            },
        )
        return True

    # -- answers ---------------------------------------------------------------------------------

    @property
    def serving(self) -> _Serving | None:
        """The bundle serving now (its evaluator keeps the signed bytes), or None when none could load."""
        return self._serving

    def describe(self) -> str:
        line = self._describe_live()
        if self._shadow_path is not None:
            shadow = self._shadow
            line += (
                f"; shadow candidate {shadow.label} (sha256 {shadow.sha256[:12]})"
                if shadow is not None
                else "; shadow candidate refused: nothing is shadowed"
            )
        return line

    def _describe_live(self) -> str:
        serving = self._serving
        if self.status == "defaults":
            return f"NO POLICY CONFIGURED: serving the {DEFAULTS_DESCRIPTION}"
        if serving is None:
            why = f" ({self._refusal.reason}: {self._refusal})" if self._refusal is not None else ""
            return f"POLICY REFUSED{why}: every guarded call is denied with `policy_unavailable`"
        line = f"policy {serving.label} (sha256 {serving.sha256[:12]}, {serving.rules} rules, signer {serving.kid})"
        if self._refusal is not None:
            line += f"; a newer bundle was refused ({self._refusal.reason})"
        return line

    def _risk(self, schema_or_bundle: ActionSchema | ActionBundle) -> Risk:
        scorer = self._scorer
        if scorer is None:
            return _WORST_RISK
        try:
            packed = pack_schema(
                schema_or_bundle
                if isinstance(schema_or_bundle, ActionSchema)
                else ActionSchema(
                    action=schema_or_bundle.action,
                    category=schema_or_bundle.category,
                    reversibility=schema_or_bundle.reversibility,
                    blast_radius=schema_or_bundle.blast_radius,
                    sensitivity=schema_or_bundle.sensitivity,
                )
            )
            return unpack_risk(scorer.score_raw(packed))
        except Exception:
            return _WORST_RISK

    def score(self, schema: ActionSchema) -> Risk:
        """Risk of an action schema (for listing tools); never raises."""
        return self._risk(schema)

    def decide(self, bundle: ActionBundle, *, full_trace: bool = False) -> tuple[Risk, Decision]:
        """Decide one call. Never raises: anything that goes wrong is a deny."""
        serving = self._serving  # the version this call is decided by, whatever reloads meanwhile
        if serving is None:
            why = str(self._refusal) if self._refusal is not None else "no policy could be loaded"
            return self._risk(bundle), Decision(
                effect=Effect.DENY,
                reason="policy_unavailable",
                policy="unavailable",
                trace=(TraceEntry(rule_id="-", matched=False, why=why),),
            )
        try:
            raw = serving.evaluator.decide_raw(encode_request(request_dict(bundle)), full_trace=full_trace)
            risk, decision = parse_decision(raw, policy=serving.label, sha256=serving.sha256)
            return risk, with_bundle_facts(decision, serving.evaluator.data, serving.sha256)
        except Exception as exc:  # fail closed: no error inside a decision may grant
            why = str(exc) if isinstance(exc, GuardError) else f"unexpected {type(exc).__name__}"
            return self._risk(bundle), Decision(
                effect=Effect.DENY,
                reason="policy_engine_error",
                policy=serving.label,
                policy_sha256=serving.sha256,
                trace=(TraceEntry(rule_id="-", matched=False, why=why),),
            )

    def _decide_with(self, serving: _Serving, bundle: ActionBundle) -> Decision:
        try:
            raw = serving.evaluator.decide_raw(encode_request(request_dict(bundle)))
            return parse_decision(raw, policy=serving.label, sha256=serving.sha256)[1]
        except Exception:  # what a live engine would answer: a deny
            return Decision(
                effect=Effect.DENY, reason="policy_engine_error", policy=serving.label, policy_sha256=serving.sha256
            )

    def shadow_events(self, bundle: ActionBundle, decision: Decision) -> list[EventIn]:
        """The shadow candidate's disagreement with `decision` on this call, as an event to record beside
        it; empty when they agree or nothing is shadowed. Never raises, never changes `decision`."""
        shadow = self._shadow
        if shadow is None:
            return []
        try:
            candidate = self._decide_with(shadow, bundle)
            if not _differs(decision, candidate):
                return []
            return [
                EventIn(
                    SHADOW_EVENT,
                    request_id=bundle.request_id,
                    actor=bundle.actor.principal,
                    upstream=bundle.upstream,
                    redacted=True,
                    data={
                        "action": bundle.action,
                        "payload_hash": bundle.payload_hash,
                        "live": decision_summary(decision),
                        "shadow": decision_summary(candidate),
                        "shadow_sha256": shadow.sha256,
                    },
                )
            ]
        except Exception:  # a shadow is an experiment: its failure is never the call's
            return []
