"""Source adapters: how an integration reads exceptions from (and acts back on) one ERP."""
