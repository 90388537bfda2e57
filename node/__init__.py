"""The Agora node process: settings, identity, auth, storage, app factory and CLI."""
