"""Sign-in with an existing identity provider: upstream OIDC ID tokens as client credentials."""
