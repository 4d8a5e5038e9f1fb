"""The live web board: a read-only view of stock, prescriptions and couriers, fed by the public topics."""
