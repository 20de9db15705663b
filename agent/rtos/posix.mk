# Protocol side of the host build (included by the Makefile):
#   make sim        build/host/fleet-shim-sim (the simulated device, under ASan/UBSan)
#   make json-lib   build/host/libfleetjson.so (JSON reader/writer + base64, for ctypes tests)
#                   and build/host/libfleetjson-asan.so (the same under ASan/UBSan, for the fuzz test)
# `make host` builds both as well.

CURL_CFLAGS := $(shell pkg-config --cflags libcurl)
CURL_LIBS   := $(shell pkg-config --libs libcurl)
POSIX_SRCS  := port/posix/transport_curl.c port/posix/posix_sys.c
JSON_SRCS   := src/json.c src/base64.c
SIM_BIN     := $(HOST)/fleet-shim-sim
JSON_LIB    := $(HOST)/libfleetjson.so
JSON_LIB_ASAN := $(HOST)/libfleetjson-asan.so

.PHONY: sim json-lib
sim: $(SIM_BIN)
json-lib: $(JSON_LIB) $(JSON_LIB_ASAN)
host: $(SIM_BIN) $(JSON_LIB) $(JSON_LIB_ASAN)

$(SIM_BIN): tools/fleet_shim_sim.c $(CORE_SRCS) $(PROTO_SRCS) $(SIM_SRCS) $(SODIUM_SRCS) $(POSIX_SRCS) $(CORE_HDRS)
	@mkdir -p $(HOST)
	$(CC) $(HOST_CFLAGS) $(SAN_FLAGS) $(CURL_CFLAGS) -o $@ tools/fleet_shim_sim.c $(CORE_SRCS) $(PROTO_SRCS) \
	    $(SIM_SRCS) $(SODIUM_SRCS) $(POSIX_SRCS) $(SODIUM_LIBS) $(CURL_LIBS)

$(JSON_LIB): $(JSON_SRCS) $(CORE_HDRS)
	@mkdir -p $(HOST)
	$(CC) $(HOST_CFLAGS) -fPIC -shared -o $@ $(JSON_SRCS)

$(JSON_LIB_ASAN): $(JSON_SRCS) $(CORE_HDRS)
	@mkdir -p $(HOST)
	$(CC) $(HOST_CFLAGS) $(SAN_FLAGS) -fPIC -shared -o $@ $(JSON_SRCS)
