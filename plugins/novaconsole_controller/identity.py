"""The guide's service credentials and API endpoints, through openstacksdk in one process.

Project ``service``; per service a user (``nova``, and ``placement``, ``glance``,
``neutron`` for the lab) with roles ``admin`` and ``service`` on that project (keystonemiddleware
13 wants service tokens to carry ``service``); the service entity; public, internal and admin
endpoints in the site's region. One snapshot of Keystone (a handful of list calls) is diffed
against what is wanted by :func:`diff_identity`, a pure function, so re-runs never create
duplicates, drifted endpoint URLs and passwords are repaired, and nothing else is touched.
If applying fails, everything this run created is deleted again: no orphan users.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from novaconsole.cloud import connect, describe_failure
from novaconsole.errors import NovaconsoleError, StepFailed
from novaconsole.site import Site
from novaconsole.steps import RunContext, Step
from novaconsole_controller.novaconf import keystone_url

INTERFACES = ("public", "internal", "admin")
SERVICE_ROLES = ("admin", "service")


@dataclass(frozen=True)
class ServiceIdentity:
    """One service's user, catalog entry and endpoint URL."""

    user: str
    secret: str  # the guide placeholder holding the user's password
    name: str
    type: str
    description: str
    url: str


@dataclass(frozen=True)
class IdentityWanted:
    """Everything the controller wants in Keystone."""

    project: str
    domain_id: str
    region: str
    services: tuple[ServiceIdentity, ...]
    roles: tuple[str, ...] = SERVICE_ROLES


@dataclass(frozen=True)
class Endpoint:
    id: str
    service_id: str
    interface: str
    region: str | None
    url: str


@dataclass
class IdentityObserved:
    """A plain-data snapshot of the Keystone entities that matter."""

    project_id: str | None = None
    region_exists: bool = False
    roles: dict[str, str] = field(default_factory=dict)  # name -> id
    users: dict[str, str] = field(default_factory=dict)  # name -> id
    assignments: set[tuple[str, str]] = field(default_factory=set)  # (user_id, role_id)
    services: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # type -> [(id, name)]
    endpoints: list[Endpoint] = field(default_factory=list)
    #: Users whose wanted password does not authenticate.
    stale_passwords: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Action:
    """One change to make in Keystone; ``text`` is the (secret-free) plan line."""

    kind: str
    text: str
    args: tuple[str, ...] = ()
    #: The service (user name) an action belongs to; "" for shared entities. Actions of
    #: different services are independent and may run concurrently.
    group: str = ""


def _norm(url: str) -> str:
    return url.rstrip("/")


def service_id_for(observed: IdentityObserved, svc: ServiceIdentity) -> str | None:
    """The existing service entity for ``svc`` (its type; the wanted name preferred)."""
    found = observed.services.get(svc.type, [])
    named = [sid for sid, name in found if name == svc.name]
    candidates = named or [sid for sid, _n in found]
    return candidates[0] if candidates else None


def diff_identity(observed: IdentityObserved, wanted: IdentityWanted) -> list[Action]:
    """What to create or repair so Keystone holds ``wanted`` (pure: plain data in and out)."""
    actions: list[Action] = []
    if observed.project_id is None:
        actions.append(Action("project", f"create project {wanted.project}"))
    if not observed.region_exists:
        actions.append(Action("region", f"create region {wanted.region}"))
    for role in wanted.roles:
        if role not in observed.roles:
            actions.append(Action("role", f"create role {role}", (role,)))
    for svc in wanted.services:
        user_id = observed.users.get(svc.user)
        if user_id is None:
            actions.append(
                Action(
                    "user",
                    f"create user {svc.user} (password from {svc.secret})",
                    (svc.user,),
                    svc.user,
                )
            )
        elif svc.user in observed.stale_passwords:
            actions.append(
                Action(
                    "password",
                    f"reset the password of user {svc.user} (it no longer matches {svc.secret})",
                    (svc.user,),
                    svc.user,
                )
            )
        for role in wanted.roles:
            role_id = observed.roles.get(role)
            if user_id is None or role_id is None or (user_id, role_id) not in observed.assignments:
                actions.append(
                    Action(
                        "assign",
                        f"add role {role} to user {svc.user} on project {wanted.project}",
                        (svc.user, role),
                        svc.user,
                    )
                )
        service_id = service_id_for(observed, svc)
        if service_id is None:
            actions.append(
                Action("service", f"create service {svc.name} ({svc.type})", (svc.type,), svc.user)
            )
        for interface in INTERFACES:
            matching = [
                e
                for e in observed.endpoints
                if service_id is not None
                and e.service_id == service_id
                and e.interface == interface
                and e.region == wanted.region
            ]
            if not matching:
                actions.append(
                    Action(
                        "endpoint",
                        f"create {svc.type} {interface} endpoint {svc.url} in {wanted.region}",
                        (svc.type, interface),
                        svc.user,
                    )
                )
                continue
            keep = next((e for e in matching if _norm(e.url) == _norm(svc.url)), matching[0])
            if _norm(keep.url) != _norm(svc.url):
                actions.append(
                    Action(
                        "endpoint-url",
                        f"change {svc.type} {interface} endpoint URL {keep.url} -> {svc.url}",
                        (keep.id, svc.url),
                        svc.user,
                    )
                )
            for extra in matching:
                if extra.id != keep.id:
                    actions.append(
                        Action(
                            "endpoint-delete",
                            f"delete duplicate {svc.type} {interface} endpoint {extra.url}",
                            (extra.id,),
                            svc.user,
                        )
                    )
    return actions


# -- the snapshot, through openstacksdk ----------------------------------------------


def keystone_connection(ctx: RunContext, cloud: str | None) -> Any:
    """The admin openstacksdk Connection, opened once per run (``ctx.cache``)."""
    key = f"openstacksdk:{cloud or '<env>'}"
    conn = ctx.cache.get(key)
    if conn is None:
        conn = connect(cloud)
        ctx.cache[key] = conn
    return conn


def drop_connection(ctx: RunContext, cloud: str | None) -> None:
    """Forget the run's connection, so the next step logs in again (a fresh catalog)."""
    ctx.cache.pop(f"openstacksdk:{cloud or '<env>'}", None)


def password_authenticates(auth_url: str, user: str, password: str, domain_id: str) -> bool:
    """True when ``user`` gets an (unscoped) token with ``password``."""
    from keystoneauth1 import exceptions as ka
    from keystoneauth1 import session
    from keystoneauth1.identity import v3

    auth = v3.Password(
        auth_url=auth_url, username=user, password=password, user_domain_id=domain_id
    )
    try:
        auth.get_auth_ref(session.Session(timeout=15))
    except ka.Unauthorized:
        return False
    return True


def check_passwords(
    auth_url: str, domain_id: str, users: dict[str, str], passwords: dict[str, str]
) -> dict[str, bool]:
    """Whether each user's wanted password authenticates.

    Concurrently (each check costs Keystone a bcrypt round); a check that meets a server
    error is retried alone: a Keystone on SQLite (the lab's default) answers concurrent
    writes (a user's first ``last_active_at`` of the day) with 500 "database is locked".
    """
    from keystoneauth1 import exceptions as ka

    def attempt(name: str) -> bool | None:
        try:
            return password_authenticates(auth_url, name, passwords[name], domain_id)
        except ka.HttpError:
            return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(users, pool.map(attempt, users), strict=True))
    return {
        name: ok
        if ok is not None
        else password_authenticates(auth_url, name, passwords[name], domain_id)
        for name, ok in results.items()
    }


def snapshot(
    conn: Any,
    wanted: IdentityWanted,
    passwords: dict[str, str],
    auth_url: str,
    trusted: frozenset[str] = frozenset(),
) -> IdentityObserved:
    """Read what Keystone holds for ``wanted`` (list calls only; changes nothing).

    The list calls are independent reads, so they run concurrently: on a busy two-core
    host each Keystone request takes the better part of a second.
    """
    ident = conn.identity
    observed = IdentityObserved()
    names = {s.user for s in wanted.services}
    types = {s.type for s in wanted.services}
    with ThreadPoolExecutor(max_workers=6) as pool:
        projects = pool.submit(
            lambda: list(ident.projects(name=wanted.project, domain_id=wanted.domain_id))
        )
        regions = pool.submit(lambda: [r.id for r in ident.regions()])
        roles = pool.submit(lambda: [(r.name, r.id) for r in ident.roles()])
        users = pool.submit(
            lambda: [(u.name, u.id) for u in ident.users(domain_id=wanted.domain_id)]
        )
        services = pool.submit(lambda: [(s.type, s.id, s.name or "") for s in ident.services()])
        endpoints = pool.submit(
            lambda: [
                Endpoint(e.id, e.service_id, e.interface, e.region_id, e.url)
                for e in ident.endpoints(region_id=wanted.region)
            ]
        )
        found = projects.result()
        observed.project_id = found[0].id if found else None
        assignments = (
            pool.submit(
                lambda: [
                    ((a.user or {}).get("id"), (a.role or {}).get("id"))
                    for a in ident.role_assignments(scope_project_id=observed.project_id)
                ]
            )
            if observed.project_id is not None
            else None
        )
        observed.users = {n: i for n, i in users.result() if n in names}
        observed.region_exists = wanted.region in regions.result()
        observed.roles = {n: i for n, i in roles.result() if n in wanted.roles}
        for kind, sid, name in services.result():
            if kind in types:
                observed.services.setdefault(kind, []).append((sid, name))
        observed.endpoints = endpoints.result()
        if assignments is not None:
            observed.assignments = {(u, r) for u, r in assignments.result() if u and r}
    observed.stale_passwords = {
        name
        for name, ok in check_passwords(
            auth_url,
            wanted.domain_id,
            {n: i for n, i in observed.users.items() if n not in trusted},
            passwords,
        ).items()
        if not ok
    }
    return observed


class _Applier:
    """Carries out actions, remembering what it created so a failure can undo it."""

    def __init__(
        self,
        conn: Any,
        wanted: IdentityWanted,
        observed: IdentityObserved,
        passwords: dict[str, str],
        log: Callable[[str], None],
    ) -> None:
        self.ident = conn.identity
        self.wanted = wanted
        self.passwords = passwords
        self.log = log
        self.lock = threading.Lock()
        self.created: list[tuple[str, Any]] = []
        self.project_id = observed.project_id
        self.roles = dict(observed.roles)
        self.users = dict(observed.users)
        self.by_type = {s.type: s for s in wanted.services}
        self.by_user = {s.user: s for s in wanted.services}
        self.service_ids = {s.type: service_id_for(observed, s) for s in wanted.services}

    def _created(self, kind: str, resource: Any) -> Any:
        with self.lock:
            self.created.append((kind, resource))
        return resource

    def run(self, actions: list[Action]) -> None:
        """Run actions in order, failing with a description of the failing one."""
        for action in actions:
            self.log(action.text)
            try:
                self.do(action)
            except NovaconsoleError:
                raise
            except Exception as exc:
                raise describe_failure(exc, f"keystone: {action.text}") from None

    def do(self, action: Action) -> None:
        ident, wanted, args = self.ident, self.wanted, action.args
        if action.kind == "project":
            project = ident.create_project(
                name=wanted.project, domain_id=wanted.domain_id, description="Service Project"
            )
            self.project_id = self._created("project", project).id
        elif action.kind == "region":
            self._created("region", ident.create_region(id=wanted.region))
        elif action.kind == "role":
            role = self._created("role", ident.create_role(name=args[0]))
            self.roles[role.name] = role.id
        elif action.kind == "user":
            user = ident.create_user(
                name=args[0],
                domain_id=wanted.domain_id,
                password=self.passwords[args[0]],
                description=f"{self.by_user[args[0]].name} service user",
            )
            self.users[args[0]] = self._created("user", user).id
        elif action.kind == "password":
            ident.update_user(self.users[args[0]], password=self.passwords[args[0]])
        elif action.kind == "assign":
            ident.assign_project_role_to_user(
                self.project_id, self.users[args[0]], self.roles[args[1]]
            )
        elif action.kind == "service":
            svc = self.by_type[args[0]]
            service = ident.create_service(
                name=svc.name, type=svc.type, description=svc.description, is_enabled=True
            )
            self.service_ids[svc.type] = self._created("service", service).id
        elif action.kind == "endpoint":
            svc = self.by_type[args[0]]
            endpoint = ident.create_endpoint(
                service_id=self.service_ids[svc.type],
                interface=args[1],
                url=svc.url,
                region_id=wanted.region,
                is_enabled=True,
            )
            self._created("endpoint", endpoint)
        elif action.kind == "endpoint-url":
            ident.update_endpoint(args[0], url=args[1])
        elif action.kind == "endpoint-delete":
            ident.delete_endpoint(args[0], ignore_missing=True)
        else:  # pragma: no cover - diff_identity only makes the kinds above
            raise StepFailed(f"unknown identity action {action.kind}")


def apply_actions(
    conn: Any,
    wanted: IdentityWanted,
    observed: IdentityObserved,
    actions: list[Action],
    passwords: dict[str, str],
    log: Callable[[str], None] = lambda _l: None,
) -> None:
    """Carry out ``actions``; on any failure delete what this call created, then raise.

    Shared entities (project, region, roles) come first, then each service's actions.
    Writes stay sequential: a Keystone on SQLite (the lab's default) answers concurrent
    writes with 500 "database is locked".
    """
    applier = _Applier(conn, wanted, observed, passwords, log)
    shared = [a for a in actions if not a.group]
    groups: dict[str, list[Action]] = {}
    for action in actions:
        if action.group:
            groups.setdefault(action.group, []).append(action)
    try:
        applier.run(shared)
        for group in groups.values():
            applier.run(group)
    except Exception as exc:
        undone = _undo(applier.ident, applier.created)
        text = (
            exc.one_line()
            if isinstance(exc, NovaconsoleError)
            else f"keystone: {type(exc).__name__}: {' '.join(str(exc).split())}"
        )
        raise StepFailed(f"{text}{undone}") from None


def _undo(ident: Any, created: list[tuple[str, Any]]) -> str:
    """Delete what was created, newest first; returns a note for the error message."""
    if not created:
        return ""
    leftovers = []
    for kind, resource in reversed(created):
        try:
            getattr(ident, f"delete_{kind}")(resource, ignore_missing=True)
        except Exception:
            leftovers.append(f"{kind} {getattr(resource, 'name', None) or resource.id}")
    if leftovers:
        return f" (could not remove what this run created: {', '.join(leftovers)})"
    return f" (removed the {len(created)} entities this run had created)"


# -- the step ---------------------------------------------------------------------------

#: Per extra service: (user, password secret, service name, type, description, port, path).
CATALOG: dict[str, tuple[str, str, str, str, str, int, str]] = {
    "placement": (
        "placement",
        "PLACEMENT_PASS",
        "placement",
        "placement",
        "Placement API",
        8778,
        "",
    ),
    "glance": ("glance", "GLANCE_PASS", "glance", "image", "OpenStack Image", 9292, ""),
    "neutron": ("neutron", "NEUTRON_PASS", "neutron", "network", "OpenStack Networking", 9696, ""),
}


def wanted_identity(site: Site) -> IdentityWanted:
    """The guide's entities for ``site``: nova always, the extras per ``extra_services``."""
    host = f"[{site.controller_host}]" if ":" in site.controller_host else site.controller_host
    services = [
        ServiceIdentity(
            "nova",
            "NOVA_PASS",
            "nova",
            "compute",
            "OpenStack Compute",
            f"http://{host}:{site.nova_api_port}/v2.1",
        )
    ]
    for extra in site.extra_services:
        if extra in CATALOG:
            user, secret, name, kind, description, port, path = CATALOG[extra]
            services.append(
                ServiceIdentity(
                    user, secret, name, kind, description, f"http://{host}:{port}{path}"
                )
            )
    return IdentityWanted("service", "default", site.region, tuple(services))


class IdentityStep(Step[IdentityObserved]):
    """Project, users, roles, service entities and endpoints in Keystone."""

    name = "controller.identity"
    phase = "identity"

    def __init__(
        self, site: Site, wanted: IdentityWanted | None = None, *, auth_url: str | None = None
    ) -> None:
        self.site = site
        self.wanted = wanted or wanted_identity(site)
        self.auth_url = auth_url or keystone_url(site) + "/v3"
        users = ", ".join(s.user for s in self.wanted.services)
        #: The snapshot of the last check (apply follows check at once in a run).
        self._observed: IdentityObserved | None = None
        #: Users whose password this run has just set: verify need not log them in again.
        self._fresh: frozenset[str] = frozenset()
        self.description = (
            f"keystone project {self.wanted.project}, users {users}, services and endpoints "
            f"in {self.wanted.region}"
        )

    def _passwords(self) -> dict[str, str]:
        return {s.user: self.site.secret(s.secret) for s in self.wanted.services}

    def check(self, ctx: RunContext) -> IdentityObserved:
        passwords = self._passwords()  # a missing secret fails before Keystone is touched
        conn = keystone_connection(ctx, self.site.os_cloud)
        try:
            self._observed = snapshot(conn, self.wanted, passwords, self.auth_url, self._fresh)
            return self._observed
        except NovaconsoleError:
            raise
        except Exception as exc:
            where = f"keystone (cloud {self.site.os_cloud or 'from the environment'})"
            raise describe_failure(exc, where) from None

    def plan(self, ctx: RunContext, observed: IdentityObserved) -> list[str]:
        return [a.text for a in diff_identity(observed, self.wanted)]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self._observed or self.check(ctx)
        self._observed = None
        actions = diff_identity(observed, self.wanted)
        conn = keystone_connection(ctx, self.site.os_cloud)
        apply_actions(conn, self.wanted, observed, actions, self._passwords(), ctx.log)
        if any(a.kind.startswith(("service", "endpoint", "region")) for a in actions):
            # The connection's token carries the catalog as it was before these services
            # and endpoints existed, and openstacksdk caches a proxy it found no endpoint
            # for as disabled: later steps (discover_hosts asking nova-api) need a new one.
            drop_connection(ctx, self.site.os_cloud)
        self._fresh = frozenset(a.args[0] for a in actions if a.kind in ("user", "password"))

    def verify(self, ctx: RunContext) -> None:
        """Re-check (passwords just set are not logged in again), expecting an empty plan."""
        try:
            super().verify(ctx)
        finally:
            self._fresh = frozenset()
            self._observed = None


def identity_steps(site: Site) -> list[Step[Any]]:
    """The Keystone step for the controller."""
    return [IdentityStep(site)]


def remove_identity(conn: Any, wanted: IdentityWanted, *, project: bool = True) -> list[str]:
    """Delete the users, service entities, endpoints (and project) of ``wanted``.

    For tests and benchmarks that create throw-away entities; never used by provisioning.
    Returns what was deleted.
    """
    ident = conn.identity
    deleted: list[str] = []
    types = {s.type for s in wanted.services}
    for service in list(ident.services()):
        if service.type in types:
            for endpoint in list(ident.endpoints(service_id=service.id)):
                ident.delete_endpoint(endpoint, ignore_missing=True)
                deleted.append(f"endpoint {endpoint.url}")
            ident.delete_service(service, ignore_missing=True)
            deleted.append(f"service {service.name}")
    names = {s.user for s in wanted.services}
    for user in list(ident.users(domain_id=wanted.domain_id)):
        if user.name in names:
            ident.delete_user(user, ignore_missing=True)
            deleted.append(f"user {user.name}")
    if project:
        for found in list(ident.projects(name=wanted.project, domain_id=wanted.domain_id)):
            ident.delete_project(found, ignore_missing=True)
            deleted.append(f"project {found.name}")
    return deleted
