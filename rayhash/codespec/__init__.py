"""Code specs: what a code is (binary sign bits), how it is packed, written as hex and compared."""
