#!/bin/bash
mkdir -p /tmp/adu/testdata/test-device/vacuum-1/data/
