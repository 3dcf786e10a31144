"""OFD relay mode (SPEC section 9): carry the FN's messages to the OFD and its receipts back."""
