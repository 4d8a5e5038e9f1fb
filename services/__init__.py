"""The four fulfillment services, their shared runtime, and the people-facing tools."""
