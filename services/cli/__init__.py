"""Command-line tools for upstream systems, warehouse and pharmacy staff, and couriers."""
