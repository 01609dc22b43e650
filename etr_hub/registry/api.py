"""Registry operations. Files go to the content-addressed store first, then one transaction
records them, so a process killed mid-way leaves no half-registered expert."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import DatabaseError, DataError, IntegrityError, InterfaceError, OperationalError
from sqlmodel import Session, col, select

from etr_hub.bundle import Bundle, Manifest, load_bundle, write_bundle
from etr_hub.bundle.card import HUB_CARD, hub_model_card
from etr_hub.config import Settings
from etr_hub.config import settings as current_settings
from etr_hub.errors import BundleError, RegistryError
from etr_hub.registry.db import corrupt_sqlite, engine_for, migrate, unreachable
from etr_hub.registry.env_names import check_env_names
from etr_hub.registry.tables import Expert, MetaModel, QuerySet
from etr_hub.store import GcReport, Store


class Registry:
    def __init__(self, cfg: Settings):
        self.settings = cfg
        self.engine = engine_for(cfg.database_url)
        self.store = Store(cfg.store_dir)

    @classmethod
    def open(cls, cfg: Settings | None = None) -> Registry:
        cfg = cfg or current_settings()
        cfg.home.mkdir(parents=True, exist_ok=True)
        reg = cls(cfg)
        try:
            migrate(reg.engine)
        except (OperationalError, InterfaceError) as e:
            raise unreachable(cfg.database_url, e) from None
        except DatabaseError as e:
            raise corrupt_sqlite(cfg.database_url, e) or e from None
        return reg

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One transaction. A lost database connection (server down or restarted) becomes a
        one-line RegistryError; the transaction is rolled back, so nothing is half-written."""
        engine = self.engine.execution_options(write=True) if write else self.engine
        try:
            with Session(engine, expire_on_commit=False) as s, s.begin():
                yield s
        except (OperationalError, InterfaceError) as e:
            raise unreachable(self.settings.database_url, e) from None
        except DatabaseError as e:  # e.g. a page corrupted since the file was opened
            raise corrupt_sqlite(self.settings.database_url, e) or e from None

    def abspath(self, store_rel: str) -> Path:
        return self.store.root / store_rel

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.store.root).as_posix()

    # -- meta model ---------------------------------------------------------------------
    def active_meta(self) -> MetaModel | None:
        with self.session() as s:
            return s.exec(select(MetaModel).where(col(MetaModel.active))).first()

    def register_meta(
        self,
        *,
        reference: dict,
        display: str,
        fingerprint: str,
        hidden_size: int,
        vocab_size: int,
        max_row_norm: float | None = None,
    ) -> MetaModel:
        """Record a meta model and make it the active one (idempotent; fills in max_row_norm when
        a registry from before it was recorded runs `etr-hub init` again)."""
        with self.session(write=True) as s:
            for other in s.exec(select(MetaModel).where(col(MetaModel.active))):
                other.active = False
            row = s.exec(select(MetaModel).where(MetaModel.fingerprint == fingerprint)).first()
            if row is None:
                row = MetaModel(
                    fingerprint=fingerprint,
                    reference=reference,
                    display=display,
                    hidden_size=hidden_size,
                    vocab_size=vocab_size,
                )
            if max_row_norm is not None:
                row.max_row_norm = float(max_row_norm)
            row.active = True
            s.add(row)
        return row

    def require_meta(self) -> MetaModel:
        meta = self.active_meta()
        if meta is None:
            raise RegistryError(
                "no meta model is registered", "run `etr-hub init` (or `etr-hub init --meta REF`) first"
            )
        return meta

    # -- experts ------------------------------------------------------------------------
    def _check_fits(self, manifest: Manifest, meta: MetaModel) -> None:
        if manifest.meta.fingerprint != meta.fingerprint:
            raise RegistryError(
                f"expert '{manifest.name}' was trained against meta model {manifest.meta.fingerprint[:12]}…"
                f" but the registry's meta model is {meta.fingerprint[:12]}… ({meta.display})",
                "retrain the token against this meta model with `etr-hub train-token`",
            )
        if manifest.meta.hidden_size != meta.hidden_size:
            raise RegistryError(
                f"expert '{manifest.name}' has token dimension {manifest.meta.hidden_size},"
                f" the meta model's hidden size is {meta.hidden_size}",
                "retrain the token against this meta model",
            )

    def _check_env(self, bundle: Bundle, allowed: list[str]) -> None:
        """A bundle reads an environment variable (an API key it sends to its endpoint) only when
        the operator allowed that variable by name."""
        from etr_hub.models.refs import redact_url

        ref = bundle.manifest.expert
        for name in ref.env_names():
            if name not in allowed:
                raise BundleError(
                    f"bundle {bundle.root}: its expert reference asks for the environment variable ${name}, "
                    f"which the hub would send as an API key to {redact_url(ref.url or '?')}",
                    f"if you trust that endpoint with ${name}, add the bundle with `allow_env={name}`",
                )

    def _check_norm(self, bundle: Bundle, meta: MetaModel) -> None:
        """Refuse a row far larger than the meta model's own output rows (norm recorded at init;
        a registry from before that is checked at W_E assembly instead)."""
        from etr_hub.bundle.io import NORM_FIX, read_token, token_norm_problem

        if meta.max_row_norm is None:
            return
        problem = token_norm_problem(read_token(bundle.root, bundle.token_path, bundle.manifest), meta.max_row_norm)
        if problem:
            raise BundleError(f"bundle {bundle.root}: {problem}", NORM_FIX)

    def add_expert(
        self,
        source: Bundle | Path | str,
        *,
        replace: bool = False,
        allow_env: Sequence[str] = (),
        max_bundle_mb: float | None = None,
        admit: Callable[[Bundle], dict | None] | None = None,
    ) -> Expert:
        """Validate, copy into the store, record. `source`: a Bundle, a bundle folder, or `hf:ORG/REPO@COMMIT`
        (a bundle repository on the Hugging Face Hub, from its local cache unless ETR_HUB_ALLOW_DOWNLOAD=1);
        `allow_env`: environment variables the bundle's expert reference may read (never ETR_HUB_*);
        `max_bundle_mb`: the largest bundle accepted; `admit(bundle)`: before any write, raises or returns a report."""
        from etr_hub.bundle.hf import fetched_bundle, is_hf_bundle

        allowed = check_env_names(allow_env)
        if is_hf_bundle(source):
            with fetched_bundle(str(source), max_bundle_mb=max_bundle_mb) as (bundle, origin):
                return self._add(bundle, replace, allowed, origin, admit)
        bundle = source if isinstance(source, Bundle) else load_bundle(source, max_bundle_mb=max_bundle_mb)
        return self._add(bundle, replace, allowed, None, admit)

    def _add(self, bundle: Bundle, replace: bool, allowed: list[str], origin: str | None, admit: Callable | None):
        m = bundle.manifest
        self._check_env(bundle, allowed)
        meta = self.require_meta()
        self._check_fits(m, meta)
        self._check_norm(bundle, meta)
        admission = admit(bundle) if admit is not None else None  # the admission report (etr_hub.eval.admission)
        existing = self._find(m.name, m.version)
        if existing is not None and not replace:
            if self._same_bundle(existing, bundle, allowed):
                return existing  # the same bundle again: nothing to do (`expert add plugins/*/` is idempotent)
            raise RegistryError(
                f"expert '{m.name}' version {m.version} is already registered",
                "pass `replace=True` to overwrite it, or bump the manifest's 'version'",
            )
        try:
            with self.store.lock(exclusive=False):  # no gc between our copies and our commit
                row = self._copy_and_record(bundle, replace, allowed, {"source": origin, "admission": admission})
        except BaseException:
            self._gc_quietly()  # copies no row references (a failed insert, an interrupt)
            raise
        if replace and existing is not None:
            self._gc_quietly()  # the replaced version's files
        return row

    def _copy_and_record(self, bundle: Bundle, replace: bool, allowed: list[str], recorded: dict) -> Expert:
        m = bundle.manifest
        # 1) content-addressed copies (idempotent; harmless if we die after this)
        _, token_file = self.store.put_file(bundle.token_path, m.token.sha256, ".safetensors")
        adapter = self.store.put_tree(bundle.adapter_path) if bundle.adapter_path else None
        card = (
            self.store.put_file(bundle.model_card_path, suffix=".md")[1]
            if bundle.model_card_path and bundle.model_card_path.is_file()
            else None
        )
        qs_path, qs = bundle.query_set_path, m.query_set  # a path only where the manifest records a query set
        qs_file = self.store.put_file(qs_path, qs.sha256, ".jsonl")[1] if qs_path and qs else None

        # 2) one transaction records everything
        try:
            with self.session(write=True) as s:
                qs_id = None
                if qs_file is not None:
                    qs_id = self._upsert_query_set(s, m, self._rel(qs_file)).id
                if replace:
                    old = s.exec(select(Expert).where(Expert.name == m.name, Expert.version == m.version)).first()
                    if old is not None:
                        s.delete(old)
                        s.flush()
                for other in s.exec(select(Expert).where(Expert.name == m.name, col(Expert.enabled))):
                    other.enabled = False  # one enabled version per name: the newest added
                row = Expert(
                    name=m.name,
                    version=m.version,
                    enabled=True,
                    label=m.label,
                    description=m.description,
                    meta_fingerprint=m.meta.fingerprint,
                    token_sha256=m.token.sha256,
                    token_path=self._rel(token_file),
                    adapter_sha256=adapter[0] if adapter else None,
                    adapter_path=self._rel(adapter[1]) if adapter else None,
                    model_card_path=self._rel(card) if card else None,
                    query_set_id=qs_id,
                    tau=m.query_set.tau if m.query_set else None,
                    expert_ref=m.expert.model_dump(mode="json", exclude_none=True),
                    manifest=m.model_dump(mode="json", exclude_none=True),
                    allowed_env=allowed,
                    **recorded,  # source, admission
                )
                s.add(row)
        except IntegrityError:
            raise RegistryError(
                f"expert '{m.name}' version {m.version} is already registered",
                "pass `replace=True` to overwrite it, or bump the manifest's 'version'",
            ) from None
        except DataError as e:  # the manifest schema's limits should make this unreachable
            reason = " ".join(str(getattr(e, "orig", None) or e).split())[:200]
            raise RegistryError(
                f"the registry database refused expert '{m.name}': {reason}", "fix that value in the bundle's manifest"
            ) from None
        return row

    def _gc_quietly(self) -> None:
        with suppress(Exception):  # best effort: `etr-hub store gc` removes what is left
            self.collect_garbage()

    def collect_garbage(self, *, dry_run: bool = False) -> GcReport:
        """Delete stored files no registry row references, and abandoned temporaries."""
        with self.store.lock(exclusive=True):
            with self.session() as s:
                live = {
                    p for e in s.exec(select(Expert)) for p in (e.token_path, e.adapter_path, e.model_card_path) if p
                }
                live |= {q.store_path for q in s.exec(select(QuerySet))}
            return self.store.gc(live, dry_run=dry_run)

    def _same_bundle(self, row: Expert, bundle: Bundle, allowed: list[str]) -> bool:
        from etr_hub.store import tree_listing, tree_sha256

        adapter = tree_sha256(tree_listing(bundle.adapter_path)) if bundle.adapter_path else None

        def content(m: dict) -> dict:  # created_at defaults to "now" when a manifest omits it
            return {k: v for k, v in m.items() if k != "created_at"}

        return (
            content(row.manifest) == content(bundle.manifest.model_dump(mode="json", exclude_none=True))
            and row.adapter_sha256 == adapter
            and sorted(row.allowed_env or []) == allowed
        )

    def _upsert_query_set(self, s: Session, m: Manifest, store_rel: str) -> QuerySet:
        qs = m.query_set
        if qs is None:
            raise ValueError("the bundle's manifest records no query set")  # callers check first
        row = s.exec(
            select(QuerySet).where(
                QuerySet.name == m.name, QuerySet.sha256 == qs.sha256, QuerySet.meta_fingerprint == m.meta.fingerprint
            )
        ).first()
        if row is None:
            row = QuerySet(
                name=m.name,
                meta_fingerprint=m.meta.fingerprint,
                sha256=qs.sha256,
                store_path=store_rel,
                size=qs.size,
                tau=qs.tau,
                label=qs.label or m.label,
                expert_ref=m.expert.model_dump(mode="json", exclude_none=True),
                provenance=qs.model_dump(mode="json", exclude_none=True),
            )
            s.add(row)
            s.flush()
        return row

    def _find(self, name: str, version: str | None = None) -> Expert | None:
        with self.session() as s:
            q = select(Expert).where(Expert.name == name)
            if version is not None:
                return s.exec(q.where(Expert.version == version)).first()
            rows = list(s.exec(q))
        # the enabled version, else the newest one
        rows.sort(key=lambda r: (r.enabled, r.created_at), reverse=True)
        return rows[0] if rows else None

    def get_expert(self, selector: str) -> Expert:
        name, _, version = selector.partition("@")
        row = self._find(name, version or None)
        if row is None:
            known = ", ".join(sorted({e.name for e in self.list_experts()})) or "none registered"
            raise RegistryError(f"no expert named '{selector}'", f"see `etr-hub expert list` (known: {known})")
        return row

    def list_experts(self, *, enabled_only: bool = False) -> list[Expert]:
        with self.session() as s:
            q = select(Expert).order_by(col(Expert.name), col(Expert.created_at))
            if enabled_only:
                q = q.where(col(Expert.enabled))
            return list(s.exec(q))

    def set_enabled(self, selector: str, enabled: bool) -> Expert:
        target = self.get_expert(selector)
        with self.session(write=True) as s:
            for row in s.exec(select(Expert).where(Expert.name == target.name)):
                row.enabled = enabled and row.id == target.id
        target.enabled = enabled
        return target

    def set_bias(self, selector: str, bias: float, admission: dict | None = None) -> Expert:
        """The operator's bias on one expert's routing logit (and its admission report at that bias)."""
        target = self.get_expert(selector)
        with self.session(write=True) as s:
            row = s.get(Expert, target.id)
            assert row is not None
            row.bias = bias
            row.admission = admission if admission is not None else row.admission
            s.add(row)
        target.bias, target.admission = bias, admission if admission is not None else target.admission
        return target

    def set_min_p(self, min_p: float) -> MetaModel:
        """The minimum probability an expert token needs to take the routing position (0: none)."""
        meta = self.require_meta()
        with self.session(write=True) as s:
            row = s.get(MetaModel, meta.id)
            assert row is not None
            row.min_p = min_p
            s.add(row)
        meta.min_p = min_p
        return meta

    def remove_expert(self, selector: str) -> list[Expert]:
        """Remove one version (`name@version`) or every version of a name."""
        name, _, version = selector.partition("@")
        self.get_expert(selector)  # clear error if unknown
        with self.session(write=True) as s:
            q = select(Expert).where(Expert.name == name)
            if version:
                q = q.where(Expert.version == version)
            removed = list(s.exec(q))
            for row in removed:
                s.delete(row)
        self._gc_quietly()  # their files, unless another expert shares them
        return removed

    def export_expert(self, selector: str, out: Path, *, replace: bool = False) -> Bundle:
        """Write a registered expert back out as a bundle (byte-identical token file)."""
        row = self.get_expert(selector)
        m = Manifest.model_validate(row.manifest)
        files: dict[str, Path] = {m.token.file: self.abspath(row.token_path)}
        if row.adapter_path and m.expert.path:
            files[m.expert.path] = self.abspath(row.adapter_path)
        card = None
        if row.model_card_path and m.model_card:
            files[m.model_card] = self.abspath(row.model_card_path)
            card = files[m.model_card].read_text(encoding="utf-8", errors="replace")
        qs = self.query_set_for(row)
        if qs is not None and m.query_set is not None:
            files[m.query_set.file] = self.abspath(qs.store_path)
        with tempfile.TemporaryDirectory() as tmp:  # README.md: the card with the Hub's front matter (ready to upload)
            readme = Path(tmp) / HUB_CARD
            readme.write_text(hub_model_card(card, m), encoding="utf-8")
            return write_bundle(Path(out), m, {**files, HUB_CARD: readme}, replace=replace)

    # -- query sets ---------------------------------------------------------------------
    def query_set_for(self, expert: Expert) -> QuerySet | None:
        if expert.query_set_id is None:
            return None
        with self.session() as s:
            return s.get(QuerySet, expert.query_set_id)

    def latest_query_set(self, name: str, meta_fingerprint: str) -> QuerySet | None:
        with self.session() as s:
            q = select(QuerySet).where(QuerySet.name == name, QuerySet.meta_fingerprint == meta_fingerprint)
            return s.exec(q.order_by(col(QuerySet.created_at).desc(), col(QuerySet.id).desc())).first()

    def add_query_set(self, *, name: str, meta_fingerprint: str, file: Path, info: dict, expert_ref: dict) -> QuerySet:
        with self.store.lock(exclusive=False):
            sha, stored = self.store.put_file(file, suffix=".jsonl")
            with self.session(write=True) as s:
                row = s.exec(
                    select(QuerySet).where(
                        QuerySet.name == name, QuerySet.sha256 == sha, QuerySet.meta_fingerprint == meta_fingerprint
                    )
                ).first()
                if row is None:
                    row = QuerySet(
                        name=name,
                        meta_fingerprint=meta_fingerprint,
                        sha256=sha,
                        store_path=self._rel(stored),
                        size=info["size"],
                        tau=info.get("tau"),
                        label=info.get("label"),
                        expert_ref=expert_ref,
                        provenance=info,
                    )
                else:
                    row.provenance, row.created_at = info, datetime.now(UTC)
                s.add(row)
        return row
