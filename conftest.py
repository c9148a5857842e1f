"""Shared fixtures: Alice and Bob in tenant A, Charlie in tenant B, on the real PostgreSQL and Redis."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

# Playwright's sync API runs its own event loop in the test thread; Django's ORM guard would
# otherwise refuse the test's own (synchronous) database calls.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PASSWORD = "correct-horse-battery"


@dataclass
class World:
    tenant_a: object
    tenant_b: object
    alice: object
    bob: object
    charlie: object
    dora: object  # compliance, tenant A
    erin: object  # knowledge admin, tenant A
    frank: object  # compliance, tenant B
    password: str = PASSWORD


@pytest.fixture(autouse=True)
def _fast_password_hashing(request: pytest.FixtureRequest) -> None:
    if not request.config.pluginmanager.hasplugin("django"):
        return  # the engine's tests also run without Django (-p no:django)
    settings = request.getfixturevalue("settings")
    settings.PASSWORD_HASHERS = ["deepseek_web.testing.FastPBKDF2PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _clean_test_redis() -> Iterator[None]:
    """Tests own Redis database DSW_REDIS_DB (1 under `./dsw test`); start and end it empty."""
    from django.conf import settings

    from deepseek_web.redis_client import sync_client

    assert not settings.REDIS_URL.endswith("db=0"), "tests must not use the run command's Redis database"
    client = sync_client()
    client.flushdb()
    yield
    client.flushdb()


@pytest.fixture(scope="session", autouse=True)
def _knowledge_storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Uploaded files and audit anchors go to temporary folders, for this process and the daphne it starts."""
    if not request.config.pluginmanager.hasplugin("django"):
        return
    from django.conf import settings

    folder = tmp_path_factory.mktemp("knowledge-storage")
    settings.KNOWLEDGE_STORAGE_DIR = folder
    os.environ["KNOWLEDGE_STORAGE_DIR"] = str(folder)
    # Audit anchors of this run's test database only (audit/anchors.py), not the data dir's.
    anchors = tmp_path_factory.mktemp("audit-anchors") / "anchors.jsonl"
    settings.AUDIT_ANCHOR_FILE = anchors
    os.environ["AUDIT_ANCHOR_FILE"] = str(anchors)


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest, django_test_environment: None, django_db_blocker: object
) -> Iterator[None]:
    """pytest-django's set-up, but as the owner role: the app role may not create databases or
    tables. Tests then run as the app role, under row-level security, like the product."""
    from django.test.utils import setup_databases, teardown_databases

    from deepseek_web.services.paths import data_dir
    from deepseek_web.services.postgres import ensure_roles
    from tenants.rls import as_owner

    if not os.environ.get("DATABASE_URL"):
        ensure_roles(data_dir())
    with django_db_blocker.unblock(), as_owner():  # type: ignore[attr-defined]
        # django-stubs 6.1 types `aliases` as a Mapping; Django only asks `alias in aliases`.
        config = setup_databases(verbosity=0, interactive=False, aliases={"default"},  # type: ignore[arg-type]
                                 serialized_aliases=set())
    yield
    with django_db_blocker.unblock(), as_owner():  # type: ignore[attr-defined]
        try:
            teardown_databases(config, verbosity=0)
        except Exception as exc:  # noqa: BLE001 - a leftover connection must not fail the run
            request.node.warn(pytest.PytestWarning(f"could not drop the test database: {exc!r}"))


@pytest.fixture
def world(db: None) -> World:
    from django.contrib.auth import get_user_model

    from tenants.models import Membership, Role, Tenant
    from tenants.rls import tenant_context

    User = get_user_model()
    tenant_a = Tenant.objects.create(name="Tenant A", slug="tenant-a")
    tenant_b = Tenant.objects.create(name="Tenant B", slug="tenant-b")
    alice = User.objects.create_user("alice", password=PASSWORD)
    bob = User.objects.create_user("bob", password=PASSWORD)
    charlie = User.objects.create_user("charlie", password=PASSWORD)
    dora = User.objects.create_user("dora", password=PASSWORD)
    erin = User.objects.create_user("erin", password=PASSWORD)
    frank = User.objects.create_user("frank", password=PASSWORD)
    with tenant_context(tenant_a.pk):
        Membership.objects.create(tenant=tenant_a, user=alice, role=Role.EMPLOYEE)
        Membership.objects.create(tenant=tenant_a, user=bob, role=Role.OWNER)
        Membership.objects.create(tenant=tenant_a, user=dora, role=Role.COMPLIANCE)
        Membership.objects.create(tenant=tenant_a, user=erin, role=Role.KNOWLEDGE_ADMIN)
    with tenant_context(tenant_b.pk):
        Membership.objects.create(tenant=tenant_b, user=charlie, role=Role.EMPLOYEE)
        Membership.objects.create(tenant=tenant_b, user=frank, role=Role.COMPLIANCE)
    return World(tenant_a, tenant_b, alice, bob, charlie, dora, erin, frank)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random Llama with the bundled SmolLM2 tokenizer, saved like a real model folder."""
    import torch
    from django.conf import settings
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from inference.engine import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_dir(settings.MODELS_DIR)))
    torch.manual_seed(7)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-model")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def use_model(settings: object) -> Iterator[object]:
    """Points the worker runtime at a model folder for one test, with a fresh engine."""
    from inference import runtime

    def use(path: str, **overrides: object) -> None:
        runtime.shutdown()
        settings.MODEL_PATH = path  # type: ignore[attr-defined]
        for name, value in overrides.items():
            setattr(settings, name, value)

    yield use
    runtime.shutdown()
