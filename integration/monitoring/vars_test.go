package monitoring

// prometheusOwn are the series Prometheus makes itself, never exported.
var prometheusOwn = map[string]bool{"up": true}
