"""Operating the system on one machine: the embedded dev stack and the demo."""
