"""Composition root: builds the store, registry, upstreams, pipeline and both listeners from config."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import time
from functools import partial
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from .admin import AdminApi, AdminAuth, AuditAdmin, CacheAdmin, Dashboard, GuardAdmin, McpAdmin, PolicyAdmin, RoutingAdmin
from .audit import AuditLog, MerkleJournal, load_signer
from .audit.logins import FailedLogins
from .cache import CacheStore, build_store, purge_quietly
from .core import config as cfgmod
from .core.config import Config
from .core.listener_config import setting
from .core.env_refs import expand
from .core.mcp_config import McpPolicy
from .core.errors import ConfigError, ListenError
from .core.exchange import Exchange, Reply
from .core.wire import extra_params
from .core.lifecycle import every, ignore_stop_signals, raise_open_file_limit, stop_task
from .http import Listener, NativeListener
from .http.tls import ServerTls
from .limits import Admission, AnomalyGuard, Limiter, PriceTable, Throttle, build_backend, warm
from .identity import (SYSTEM, CredentialRegistry, Federation, Hasher, IdentityService, IdentitySync, Keyring, Sealer,
                       Served, TokenExchange, TokenService, gate)
from .pipeline import DataPlane, RequestContext
from .policy import LimitsSection, PendingApproval, PolicyDocument, PolicyService
from .routing import (DecisionLog, Deployment, Replica, RoutingState, Supply, build_placement, bulkhead_for, bulkheads,
                      from_config, refused_url, run_checks)
from .core.cache_config import CacheSection
from .guard import ToolApprovals
from .guard.policy import from_file as guard_from_file
from .pipeline.approvals import ApprovalEndpoints
from .pipeline.openapi import OpenApiEndpoint
from .pipeline.stages import Guard
from .store.guard_records import GuardRecords
from .store.response_records import ResponseRecords
from .memory import ResponseMemory, Vault
from .batches import Batches
from .mcp import Fanout, McpEndpoints, Streams, Subscriptions, Upstreams
from .mcp.assembly import McpParts
from .store import Store, open_store, usage_retention
from .telemetry import Metrics, UsageLedger, configure, tracing
from .telemetry.fold import RecordFold
from .telemetry.metrics import CONTENT_TYPE as METRICS_TYPE
from .upstream import NativeTransport, OpenAITransport, Transport
from .upstream.embed_batch import batchers as embed_batchers
from .telemetry.spill import SpillFile
from .workers import current_slot
from . import edge
from .probes import Probes

log = logging.getLogger("sluice")


def load_pepper(security: cfgmod.Security) -> bytes:
    """The server pepper: from config (``${ENV}``), or a file created on first start."""
    if security.pepper:
        if len(security.pepper) < 16:
            raise ConfigError("the pepper must be at least 16 characters - at `$.security.pepper`")
        return security.pepper.encode()
    path = Path(security.pepper_file)
    if path.exists():
        value = path.read_text().strip()
        if len(value) < 16:
            raise ConfigError(f"the pepper file {path} holds fewer than 16 characters")
        return value.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    log.warning("created a new pepper in %s; set security.pepper from a secret store in production", path)
    return path.read_text().strip().encode()


class Gateway:
    """One sluice process: data plane, control plane, and what they share."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: Store | None = None
        self.ledger: UsageLedger | None = None
        self.data: list[NativeListener] = []  # the data-plane listeners (one, or each of a named list)
        self.control: Listener | None = None
        self._all_transports: list[Transport] = []
        self.routing: RoutingState | None = None
        self._sim_runner = None
        self._tasks: list[asyncio.Task] = []
        self._side: set[asyncio.Future] = set()
        self.limiter: Limiter | None = None
        self.prices: PriceTable | None = None
        self.identity_sync: IdentitySync | None = None
        self.policy: PolicyService | None = None
        self.cache: CacheStore | None = None  # issue 27: the response cache's entries (memory or Redis)
        self.tracer: tracing.Tracer | None = None
        self.slot = current_slot()  # which of ``--workers N`` this is; worker 0 carries the control plane
        self.draining = False  # set on SIGTERM: /readyz answers 503 before the listeners stop
        self.mcp_upstreams: Upstreams | None = None
        self.mcp_streams: Streams | None = None
        self.mcp_subscriptions: Subscriptions | None = None
        self.mcp_fanout: Fanout | None = None
        self.approvals: ToolApprovals | None = None  # its queued tool-decision rows are written at shutdown
        self.tls: list[ServerTls] = []  # the listeners' live TLS contexts, reloaded on SIGHUP and file changes

    def secrets(self) -> list[str]:
        c = self.config
        out = list(c.admin.keys) + [k for i in c.identities for k in i.keys]
        out += [u.api_key for u in c.upstreams if u.api_key]
        out += [os.environ[s.credential_env] for s in c.mcp.servers if s.credential_env and os.environ.get(s.credential_env)]
        out += [expand(v) for s in c.mcp.servers for v in s.env.values()]  # a stdio server's env may hold its credential
        if c.security.pepper:
            out.append(c.security.pepper)
        out += [os.environ[t.key_password_env] for t in (*(lst.tls for lst in c.listeners), c.control_plane.tls)  # masked too
                if t is not None and t.key_password_env and os.environ.get(t.key_password_env)]
        return out

    async def start(self) -> None:
        """Build everything and listen. A start that fails (a port taken) ends what it had begun before raising:
        a background task left running then died mid-query as the loop closed (a traceback, or a hang)."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        c = self.config
        masker = configure(c.logging.level, c.logging.format, self.secrets())
        pepper = load_pepper(c.security)
        hasher = Hasher(pepper)
        self.store = store = open_store(c.store.url)
        store.journal = MerkleJournal()  # type: ignore[attr-defined]  # every change gets its audit entry, or fails
        await store.open()
        audit = AuditLog(store, c.audit, load_signer(c.audit))
        if c.audit.checkpoint_interval_s > 0:
            self._tasks.append(asyncio.get_running_loop().create_task(audit.run(c.audit.checkpoint_interval_s), name="audit-checkpoints"))
        self._tasks.append(asyncio.get_running_loop().create_task(every(c.ledger.retention_interval, usage_retention.UsageRetention(store, c.ledger).run), name="usage-retention"))
        registry = CredentialRegistry(hasher)
        registry.failures = gate(c.identity.auth_failures_per_minute, "failed authentications from this address")
        identities = IdentityService(store, registry, hasher, c.security)
        await identities.sync_declared(c.identities, c.teams)
        async def reload_state(version: int) -> bool:
            # one store watcher: every identity or policy change bumps the same version (Store.apply)
            loaded = await identities.load(version)
            if self.policy is not None:
                await self.policy.refresh()
            return loaded

        self.identity_sync = IdentitySync(store, reload_state, c.identity)
        await self.identity_sync.start()
        keyring = Keyring(store, Sealer(pepper), c.tokens)
        await keyring.load()
        tokens = TokenService(keyring, registry, c.tokens)
        federation = Federation(c.federation)
        await federation.warm()

        if c.sim is not None and self.slot.control:
            from .sim import serve as serve_sim

            self._sim_runner, sim_port = await serve_sim(c.sim)  # a busy sim.port: ListenError
            log.info("simulated backend on %s:%d", c.sim.host, sim_port)

        deployments: dict[str, Deployment] = {}  # per upstream: its replicas and how requests are placed on them
        for u in c.upstreams:
            replicas: list[Replica] = []
            for i, url in enumerate(u.base_urls):
                if not u.allow_link_local:
                    why = await asyncio.get_running_loop().run_in_executor(None, partial(refused_url, url, resolve=True))
                    if why:
                        raise ConfigError(f"upstream {u.name!r} is refused: {why} (set allow_link_local to permit it)"
                                          f" - at `$.upstreams`")
                one = msgspec.structs.replace(u, base_url=url, replicas=[])
                t: Transport = OpenAITransport(one) if u.client == "aiohttp" else NativeTransport(one)
                await t.start()
                self._all_transports.append(t)
                replicas.append(Replica(f"{u.name}/{i}", url, t))
            deployments[u.name] = Deployment(u.name, replicas, build_placement(u.placement, seed=u.name), bulkhead=bulkhead_for(u))

        # a caller's sampled traceparent is honoured per identity within this gate (None: never)
        callers = gate(c.telemetry.tracing.caller_sampled_per_minute, "sampled traces")
        self.tracer = tracing.build(c.telemetry.tracing, callers.allows if callers else None)  # None: tracing off
        supply = Supply.from_config(c.upstreams, deployments, record=partial(identities.record, SYSTEM) if self.slot.control else None)
        metrics = Metrics(max_identities=c.telemetry.max_identities, health=self._target_health, supply=supply.metric_rows,
                          listeners=any(lst.name is not None for lst in c.listeners), bulkheads=lambda: bulkheads(deployments))
        self.prices = prices = PriceTable(c.prices)
        fold = RecordFold(metrics, prices.nanos, masker=masker, log_requests=c.telemetry.request_log)
        self.ledger = ledger = UsageLedger(c.usage, metrics, store.write_usage, store.touch_keys, registry.take_last_used,
                                           fold, spill=SpillFile(c.lifecycle.spill_dir), spill_after=c.lifecycle.spill_after,
                                           batch_size=cfgmod.usage_batch(c.usage, c.store.url))
        ledger.start()
        self._tasks.append(asyncio.get_running_loop().create_task(every(30.0, keyring.maintain), name="keyring"))
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_outage(registry), name="outage-grace"))

        def on_throttle(t: Throttle) -> None:
            metrics.limit_event("throttled", "anomaly")
            log.warning("anomaly: identity %s throttled until %.0f (%.0f tokens in a window, baseline %.0f)",
                        t.identity, t.until, t.tokens_in_window, t.baseline)
            self._spawn(identities.record(SYSTEM, "anomaly.throttle", t.identity, msgspec.to_builtins(t)))

        anomaly = AnomalyGuard(c.limits.anomaly, on_throttle) if c.limits.anomaly else None
        self.limiter = limiter = Limiter(c.limits, build_backend(c.limits.backend, c.limits.redis_url,
                                                                 c.limits.redis_timeout_s), metrics.limit_event, anomaly,
                                           apart=self.slot.count if c.limits.backend == "memory" else 1)
        # limits can be switched on at run time, so the tokenizers load now either way
        await asyncio.get_running_loop().run_in_executor(None, warm, [m.target_model for m in c.models] + [
            v.upstream_model or m.name for m in c.registry for v in m.versions], {m.name: m.tokenizer for m in c.models if m.tokenizer})
        # The versioned policy drives routing and limits: no routing store of its own, no second poller.
        self.routing = routing = RoutingState(from_config(c), transports=deployments, breaker=c.resilience.breaker)
        self.policy = policy = PolicyService(store, routing, limiter, c.policy, PolicyDocument(
            routing=from_config(c), limits=LimitsSection(rules=list(c.limits.rules)), **self._guard_sections(c),
            mcp=McpPolicy(pin={s.name: s.pin for s in c.mcp.servers}, pins=dict(c.mcp.pins),
                          resources=list(c.mcp.resources), prompts=list(c.mcp.prompts),
                          servers=[s.entry() for s in c.mcp.servers])),
            vet=lambda now, then, back: self.mcp_upstreams.vet(now.mcp.servers, then.mcp.servers, back))  # type: ignore[union-attr]
        await policy.bootstrap()
        self._tasks.append(await supply.start(routing, c.resilience.health_interval_s))  # issue 28: checked before listening
        if c.resilience.health_interval_s > 0:
            self._tasks.append(asyncio.get_running_loop().create_task(
                run_checks(deployments, lambda: routing.table, c.resilience.health_interval_s), name="health-checks"))
        decisions = DecisionLog(c.resilience.decisions_kept)
        guard_stage, approvals, guard_records = self._guard(store, Sealer(pepper, b"sluice tool arguments v1"), policy)
        self.approvals = approvals
        # each listener refuses a body over its own limit as it arrives; decoding allows the largest of them
        body_limits = [lst.max_body_bytes or c.requests.max_body_bytes for lst in c.listeners]
        self.cache = cache = build_store(c.cache)
        identities.on_retire.append(lambda ids: [self._spawn(purge_quietly(cache, "identity", i)) for i in ids])  # offboarding
        data_plane = DataPlane(guard=guard_stage, registry=registry, tokens=tokens, routes=routing, decisions=decisions,
                               resilience=c.resilience, ledger=ledger, limiter=limiter, prices=prices,
                               limits=msgspec.structs.replace(c.requests, max_body_bytes=max(body_limits)),
                               max_tokens_cap=c.limits.max_tokens_cap, over_cap=c.limits.over_cap,
                               admission=Admission({m.name: m.capacity for m in c.models if m.capacity}),
                               extra_params={m: extra_params(p) for m, p in cfgmod.model_extra_params(c).items()},
                               tracer=self.tracer, cache=cache, embed_batches=embed_batchers(c.upstreams, deployments, metrics.embeddings_call),
                               memory=ResponseMemory(ResponseRecords(store), Vault(pepper), c.responses))  # type: ignore[arg-type]
        probes = Probes(self)
        health = [("GET", "/healthz", probes.healthz), ("GET", "/readyz", probes.readyz)]
        # /health as vLLM, SGLang and TGI serve it: what their tools (guidellm) check first.
        vllm_health = [("GET", "/health", probes.healthz)]

        async def jwks(_: Exchange) -> Reply:
            return Reply.json(tokens.jwks(), headers={"Cache-Control": "public, max-age=60"})

        mcp_endpoints: list[McpEndpoints] = []  # made below; the token endpoint mints for their canonical URIs
        exchange = TokenExchange(
            registry, tokens, federation, resources=lambda ex, uri: bool(mcp_endpoints) and mcp_endpoints[0].serves(ex, uri),
            per_source=gate(c.identity.token_requests_per_minute, "token requests from this address"),
            per_identity=gate(c.identity.token_requests_per_minute_per_identity, "token requests for this identity"))
        token_routes = [("POST", "/v1/token", exchange),
                        ("GET", "/.well-known/jwks.json", jwks)]

        async def metrics_handler(_: Exchange) -> Reply:
            ledger.fold_metrics()
            return Reply(200, metrics.render(), METRICS_TYPE)

        admin_auth = AdminAuth(hasher, c.admin.keys, registry)
        # one budget of failed-login entries for the whole control plane: the dashboard's form is one more door
        failed_logins = FailedLogins(store, c.audit.failed_logins_per_minute).record
        dashboard = Dashboard(store, admin_auth, self._target_health, currency=c.currency, on_auth_failure=failed_logins)
        redis = (c.limits.redis_url, f"{c.limits.key_prefix}mcp-notices", c.limits.redis_timeout_s) if c.limits.backend == "redis" else None
        parts = McpParts(c.mcp, policy, store, pepper, approvals, admission=Admission({}), mint=tokens.mint_service,
                         limiter=limiter, metrics=metrics, tracer=self.tracer, redis=redis)
        self.mcp_streams, self.mcp_upstreams, self.mcp_fanout, mcp = parts.streams, parts.upstreams, parts.fanout, parts.gateway
        self.mcp_subscriptions = mcp.subscriptions
        self._tasks.append(asyncio.get_running_loop().create_task(every(3600.0, parts.ended.purge), name="mcp-ended-purge"))
        admin = AdminApi(admin_auth, identities, store, ledger.flush,
                         RoutingAdmin(routing, decisions, [u.name for u in c.upstreams], policy, supply),
                         keyring, limiter, policy=PolicyAdmin(policy, store, identities), audit=AuditAdmin(audit),
                         on_auth_failure=failed_logins,
                         guard=GuardAdmin(approvals, guard_records), dashboard=dashboard,
                         mcp=McpAdmin(mcp, policy, store), cache=CacheAdmin(cache, identities))
        data_routes = data_plane.routes() + token_routes + health + vllm_health
        # the approval endpoints always: any policy version may add a tool registry
        data_routes += ApprovalEndpoints(data_plane.authenticate, approvals).routes()
        # issue 25: /mcp/{server}, authenticated as the model calls are, governed by the same tool registry
        async def identify(ex: Exchange, audience: str):
            ctx = RequestContext(ex, "mcp")
            data_plane.authenticate(ctx, audience)  # a token must be this endpoint's (RFC 8707)
            return ctx.principal

        mcp_endpoints.append(McpEndpoints(identify, mcp, c.mcp, parts.streams, self.mcp_fanout))
        data_routes += mcp_endpoints[0].routes()
        # issue 27: /v1/files and /v1/batches; every replica's runner resumes the batches in the store
        batches = Batches(store, data_plane, ledger, prices.nanos, max(body_limits), lambda ex: identify(ex, None),
                          retention_s=c.batches.file_retention_days * 86_400.0)
        data_routes += batches.routes()
        identities.on_retire.append(lambda ids: self._spawn(batches.retire(ids)))  # disabling cancels their batches
        identities.on_offboard.append(lambda ids: self._spawn(batches.offboard(ids)))  # offboarding deletes their files
        self._tasks.append(asyncio.get_running_loop().create_task(batches.runner.run(), name="batches"))
        self._tasks.append(asyncio.get_running_loop().create_task(every(c.batches.purge_interval, batches.purge.run),
                                                                  name="batch-files-purge"))
        data_routes.append(OpenApiEndpoint(data_plane.authenticate, data_routes).route)  # documents every route above
        # one server per listener, all on the same routes; a named one hands its gate to every request it takes
        self.data = [NativeListener(lst.name or "data", lst, data_routes, max_body_bytes=limit,
                                    access_log=c.logging.access_log, ssl_context=edge.server_tls(self, lst.name or "data", lst, i),
                                    served=None if lst.name is None else Served(lst.name, lst.serves))
                     for i, (lst, limit) in enumerate(zip(c.listeners, body_limits))]
        for i, (lst, data) in enumerate(zip(c.listeners, self.data)):
            data.peer_cert = edge.peer_certs(lst, federation, self.tls)
        if self.slot.control:
            self.control = Listener("control", c.control_plane.host, c.control_plane.port,
                                    admin.routes() + health + [("GET", "/metrics", metrics_handler)] + dashboard.public_routes(),
                                    max_body_bytes=1024 * 1024, access_log=c.logging.access_log,
                                    ssl_context=edge.server_tls(self, "control", c.control_plane))
            if self.tls and self.tls[-1].plane == "control" and c.control_plane.tls.client_certs is not None:  # type: ignore[union-attr]
                self.control.peer_check = self.tls[-1].peer  # a gate only: control keys still authenticate
        for i, data in enumerate(self.data):
            data.reuse_port = self.slot.shared_port  # every worker binds every listener (SO_REUSEPORT)
            try:
                await data.start()
            except OSError as exc:
                raise ListenError(exc, setting(c, i, "port"), data.host, data.port) from None
        if self.control is not None:
            try:
                await self.control.start()
            except OSError as exc:
                raise ListenError(exc, "control_plane.port", c.control_plane.host, c.control_plane.port) from None
        # Everything built so far lives as long as the process: keep the collector from
        # rescanning it on every full collection (long pauses showed up in the p99).
        gc.collect()
        gc.freeze()
        where = ", ".join(f"{d.name + ' ' if d.served is not None else ''}{d.host}:{d.port}" for d in self.data)
        if self.control is not None:
            log.info("data plane on %s, control plane on %s:%d, %d models, %d live keys",
                     where, self.control.host, self.control.port, len(c.models), len(registry))
        else:
            log.info("worker %d of %d: data plane on %s", self.slot.index, self.slot.count, where)

    @staticmethod
    def _guard_sections(c: Config) -> dict:
        """The config file's ``guardrails:``, ``tools:`` (checked) and ``cache.rules``, as the policy sections they seed."""
        gr, tools = guard_from_file(msgspec.to_builtins(c.guardrails), msgspec.to_builtins(c.tools))
        return {"guardrails": gr, "tools": tools, "cache": CacheSection(rules=list(c.cache.rules))}

    def _guard(self, store: Store, sealer: Sealer, policy: PolicyService) -> tuple[Guard, ToolApprovals, GuardRecords]:
        """The guard stage, the approval book and the guardrail records (issue 12), always: the rules
        come from the active policy version, which a change set may give guardrails at any time."""
        records = GuardRecords(store)  # type: ignore[arg-type]
        approvals = ToolApprovals(records, sealer, lambda: policy.current.document.guardrails.approvals)

        def capture(row: dict) -> None:
            async def write() -> None:
                try:
                    await records.capture([row])
                except Exception as exc:  # capture is best effort; the request never waits for it
                    log.warning("prompt capture not written: %s", type(exc).__name__)
            self._spawn(write())

        return Guard(approvals, capture), approvals, records

    def _target_health(self) -> list[tuple[str, str, str | None]]:
        """(target, upstream, breaker state) of every routing target, for the metrics."""
        if self.routing is None:
            return []
        return [(t.name, t.upstream, t.breaker.state if t.breaker is not None else None)
                for t in self.routing.table.targets.values()]

    def _spawn(self, job: Awaitable[None]) -> None:
        """Run a side job (a change record) off the request path, keeping a reference until it ends."""
        task = asyncio.ensure_future(job)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _watch_outage(self, registry: CredentialRegistry) -> None:
        """Past ``lifecycle.outage_grace_s`` without confirming the registry (the store is away),
        model calls get 503 until it is confirmed again; known identities are served until then."""
        grace = self.config.lifecycle.outage_grace_s
        while grace > 0 and self.identity_sync is not None:
            expired = self.identity_sync.stale_for > grace
            if expired != registry.unconfirmed_too_long:
                registry.unconfirmed_too_long = expired
                if expired:
                    log.error("store unreachable for over %.0f s (lifecycle.outage_grace_s): refusing model calls", grace)
                else:
                    log.info("identity state confirmed again: serving model calls")
            await asyncio.sleep(0.25)

    def reload(self, path: str | None) -> None:
        """SIGHUP: reload the listeners' certificates, and take limits and prices from the config file again;
        a bad file changes nothing (each certificate pair is checked on its own)."""
        for tls in self.tls:
            tls.reload("SIGHUP")
        if path is None:
            return
        try:
            fresh = cfgmod.load(path)
        except ConfigError as exc:
            log.error("config reload refused, nothing changed: %s", exc)
            return
        if self.limiter is not None and self.prices is not None:
            self.prices.replace(fresh.prices)
            done = f"config reloaded: {len(fresh.limits.rules)} limit rules, {len(fresh.prices)} prices"
            if self.policy is not None:  # the file's limits become a change set of the versioned policy
                self._spawn(self._reload_limits(fresh.limits.rules, done))
            else:
                self.limiter.replace_rules(fresh.limits.rules)
                log.info(done)

    async def _reload_limits(self, rules: list, done: str) -> None:
        """The file's limits as a change set; ``done`` is logged once they are the active version, not before."""
        try:
            await self.policy.change_section(  # type: ignore[union-attr]
                SYSTEM, "limits", lambda s: msgspec.structs.replace(s, rules=rules), action="limits.reload",
                target="limits", detail=lambda b, a: {"to": msgspec.to_builtins(a.limits.rules)},
                reason="SIGHUP: the config file's limits")
            log.info(done)
        except PendingApproval as pending:
            log.warning("the config file's limits wait for approval as change set %s", pending.changeset["id"])
        except Exception as exc:  # a reload must never take the process down
            log.error("config reload of limits refused: %s", getattr(exc, "message", type(exc).__name__))

    async def stop(self) -> None:
        """Graceful: stop taking requests, finish those in flight, flush usage, close everything.
        Each step is timed; one that is slow is named in the log, so a stop that overran its grace says why."""
        tasks, self._tasks = self._tasks, []
        steps: list[tuple[str, Callable[[], Awaitable[object]] | None]] = [
            # ended, not only cancelled, before what they use closes: a task cancelled mid-query whose connection
            # was still closing when the store closed left the process hanging in asyncio's last cancel
            ("background tasks", (lambda: asyncio.gather(*map(stop_task, tasks))) if tasks else None),
            ("identity sync", self.identity_sync.stop if self.identity_sync is not None else None),
            ("mcp streams", self.mcp_streams.close if self.mcp_streams is not None else None),  # before the drain
            ("data plane drain", (lambda: asyncio.gather(*(d.stop() for d in self.data))) if self.data else None),
            ("limits backend", self.limiter.close if self.limiter is not None else None),
            ("response cache", self.cache.close if self.cache is not None else None),
            ("usage flush", self.ledger.close if self.ledger is not None else None),
            ("trace export", (lambda: asyncio.get_running_loop().run_in_executor(None, self.tracer.shutdown)) if self.tracer else None),
            ("control plane", self.control.stop if self.control is not None else None),
            ("upstream pools", (lambda: asyncio.gather(*(t.close() for t in self._all_transports)))),
            ("mcp subscriptions", self.mcp_subscriptions.close if self.mcp_subscriptions is not None else None),
            ("mcp fan-out", self.mcp_fanout.close if self.mcp_fanout is not None else None),
            ("mcp upstreams", self.mcp_upstreams.close if self.mcp_upstreams is not None else None),
            ("tool decisions flush", self.approvals.close if self.approvals is not None else None),
            ("simulated backend", self._sim_runner.cleanup if self._sim_runner is not None else None),
            ("store", self.store.close if self.store is not None else None),
        ]
        loop = asyncio.get_running_loop()
        for name, step in steps:
            if step is None:
                continue
            t0 = time.monotonic()
            slow = loop.call_later(2.0, log.warning, "shutdown: %s still running after 2 s", name)
            await step()
            slow.cancel()
            took = time.monotonic() - t0
            if took > 2.0:
                log.warning("shutdown: %s took %.1f s", name, took)


async def serve_until_signalled(gateway: Gateway, config_path: str | None = None) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully; SIGHUP reloads certificates, limits and prices."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload, config_path)
    await gateway.start()
    gateway.slot.announce_ready()
    try:
        await stop.wait()
        # /readyz turns 503 first; keep serving while a load balancer notices, then drain
        gateway.draining = True
        if gateway.config.lifecycle.ready_grace_s:
            log.info("draining: /readyz answers 503; still serving for %.1f s", gateway.config.lifecycle.ready_grace_s)
            await asyncio.sleep(gateway.config.lifecycle.ready_grace_s)
    finally:
        log.info("shutting down")
        await gateway.stop()


def run(config: Config, config_path: str | None = None) -> None:
    """Blocking entry point for ``sluice serve``: uvloop when available."""
    raise_open_file_limit()  # before the listeners size their connection bound from it
    main = serve_until_signalled(Gateway(config), config_path)
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
    ignore_stop_signals()
