"""Bearer tokens (HS256 JWTs with roles) and the tokens revoked before they expire.
May import ``core``."""
