"""The measuring tools: hgrn-benchmark (and its --report tools), hgrn-flops, hgrn-bench-scan."""
