"""nx-farm's Pulumi layer: validated settings, pure render functions, one ComponentResource per role."""
