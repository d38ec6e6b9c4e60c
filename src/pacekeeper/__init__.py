"""pacekeeper: send thousands of LLM API requests as fast as the provider's limits allow."""
