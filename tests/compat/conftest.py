"""The compat tests reuse the integration daemon fixture."""

from tests.integration.conftest import daemon  # noqa: F401
