"""The model list: LiteLLM-style `model_list` YAML mapping names to provider parameters.

```yaml
model_list:
  - model_name: fast
    litellm_params: {model: openai/fast, api_base: http://127.0.0.1:9000/v1, api_key: test}
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY}
```

Only the list's names are callable (`callable`): the gateway refuses any other at submission,
a worker fails a job that names one. Without a list only the embedded model, `local`, is. With
`MOOT_ALLOW_UNLISTED_MODELS=true` a name that is not in the list goes to litellm as is (e.g.
`openai/gpt-4o-mini`, with the provider's key taken from its usual environment variable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr

# The embedded local model's name (`moot.devstack.localmodel`): callable when no list is configured.
EMBEDDED_MODEL = "local"


class LitellmParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    api_base: str | None = None
    api_key: SecretStr | None = None


class ModelEntry(BaseModel):
    model_name: str
    litellm_params: LitellmParams


class ModelList(BaseModel):
    model_list: list[ModelEntry] = Field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path | None) -> ModelList:
        if not path:
            return cls()
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(data)

    def names(self) -> list[str]:
        return [e.model_name for e in self.model_list]

    def callable_names(self) -> list[str]:
        """The names a run may use (unless unlisted models are allowed): the list's, or `local`."""
        return self.names() or [EMBEDDED_MODEL]

    def is_callable(self, name: str, allow_unlisted: bool) -> bool:
        return allow_unlisted or name in self.callable_names()

    def resolve(self, name: str) -> dict[str, Any]:
        """Keyword arguments for `litellm.acompletion` for the model called `name`."""
        for entry in self.model_list:
            if entry.model_name == name:
                params = entry.litellm_params.model_dump(exclude_none=True)
                if entry.litellm_params.api_key is not None:
                    params["api_key"] = _secret(entry.litellm_params.api_key.get_secret_value())
                return params
        return {"model": name}


def _secret(value: str) -> str:
    """`os.environ/NAME` means: read the key from that variable at call time."""
    if value.startswith("os.environ/"):
        var = value.removeprefix("os.environ/")
        if var not in os.environ:
            raise KeyError(f"environment variable {var} (named in the model list) is not set")
        return os.environ[var]
    return value
