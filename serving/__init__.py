"""BentoML service over the cosa_sdk inference API."""
