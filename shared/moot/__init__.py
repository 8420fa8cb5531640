"""moot: the common package of the moot services (domain, messages, protocols, runtime helpers)."""

import os

# litellm fetches its price map from the network at import unless told otherwise; every
# process that may import litellm imports this package first.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"
