"""Pod controller: watches the pods bound to this node and drives the provider."""
