// board_server: a TVM RPC server for a board that has only the TVM runtime (no Python).
//
// Built by scripts/install-aarch64-runtime.sh with aarch64-linux-gnu-g++ against the runtime of
// the aarch64 apache-tvm wheel, like vm_runner; runs on a Raspberry Pi / Jetson, or here under
// qemu-user (the tests' "board farm"):
//
//   board_server [--host 0.0.0.0] [--port 9090] [--port-end 9199]
//                [--tracker HOST:PORT --key KEY] [--custom-addr ADDR] [--threads N]
//
// It speaks the protocol of python -m tvm.exec.rpc_server (tvm/rpc/server.py): registers with the
// tracker (UPDATE_INFO, then PUT with a fresh match key before every session, re-PUT when a
// client took the key but never came), checks each client's "client:MATCHKEY [-timeout=S]"
// handshake, and serves one session at a time in a forked child that runs the runtime's own
// "rpc.ServerLoop" on the socket, in a fresh work directory. A session past its -timeout is ended
// with an RPCSessionTimeoutError sent to the client, as the Python server does.
//
// Besides the functions the runtime registers (upload, download, remove, time evaluators), it
// provides what the client side expects from a server environment:
//   tvm.rpc.server.workpath(name)     the session's path of an uploaded file
//   tvm.rpc.server.load_module(name)  load an uploaded library
//   fluidml.rpc.board_info()          JSON: machine (uname -m), cpu, cores, num_threads, server
// Prints "board_server: listening on HOST:PORT" on stderr once it accepts sessions.

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tvm/ffi/any.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int32_t kRPCMagic = 0xff271;
constexpr int32_t kTrackerMagic = 0x2f271;
constexpr int32_t kCodeSuccess = kRPCMagic;
constexpr int32_t kCodeMismatch = kRPCMagic + 2;
enum TrackerCode { kSuccess = 0, kPut = 3, kUpdateInfo = 5, kGetPendingMatchkeys = 7 };

std::string g_workdir;     // the current session's directory (the forked child's)
std::string g_num_threads;

[[noreturn]] void Fail(const std::string& msg) {
  std::cerr << "board_server: error: " << msg << std::endl;
  std::exit(1);
}

struct SocketError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) throw SocketError("send failed");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t k = recv(fd, p, n, 0);
    if (k <= 0) throw SocketError("connection closed");
    p += k;
    n -= static_cast<size_t>(k);
  }
}

void SendInt(int fd, int32_t v) { SendAll(fd, &v, 4); }  // little endian, as struct "<i"

int32_t RecvInt(int fd) {
  int32_t v;
  RecvAll(fd, &v, 4);
  return v;
}

void SendJSON(int fd, const std::string& json) {
  SendInt(fd, static_cast<int32_t>(json.size()));
  SendAll(fd, json.data(), json.size());
}

std::string RecvJSON(int fd) {
  int32_t n = RecvInt(fd);
  if (n < 0 || n > (1 << 24)) throw SocketError("bad message length");
  std::string s(static_cast<size_t>(n), '\0');
  RecvAll(fd, s.data(), s.size());
  return s;
}

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string RandomKey(const std::string& prefix) {
  static std::mt19937_64 rng(std::random_device{}() ^
                             static_cast<uint64_t>(getpid()) << 16);
  std::ostringstream os;
  os << prefix << ":" << std::uniform_real_distribution<double>(0, 1)(rng);
  return os.str();
}

int Connect(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 || !res) {
    return -1;
  }
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  return fd;
}

// /proc/cpuinfo's model: "model name", else the board's "Model", else implementer/part (ARM).
std::string CpuModel() {
  std::ifstream f("/proc/cpuinfo");
  std::string line, model_name, model, implementer, part;
  auto value = [](const std::string& l) {
    std::string v = l.substr(l.find(':') + 1);
    size_t a = v.find_first_not_of(" \t");
    return a == std::string::npos ? std::string() : v.substr(a);
  };
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0 && model_name.empty()) model_name = value(line);
    if (line.rfind("Model", 0) == 0 && model.empty()) model = value(line);
    if (line.rfind("CPU implementer", 0) == 0 && implementer.empty()) implementer = value(line);
    if (line.rfind("CPU part", 0) == 0 && part.empty()) part = value(line);
  }
  if (!model_name.empty()) return model_name;
  if (!model.empty()) return model;
  if (!part.empty()) return "implementer " + implementer + " part " + part;
  return "unknown";
}

std::string BoardInfo() {
  utsname u{};
  uname(&u);
  std::ostringstream os;
  os << "{\"machine\": " << Quote(u.machine) << ", \"cpu\": " << Quote(CpuModel())
     << ", \"cores\": " << sysconf(_SC_NPROCESSORS_ONLN) << ", \"num_threads\": "
     << (g_num_threads.empty() ? "null" : Quote(g_num_threads))
     << ", \"server\": \"board_server\"}";
  return os.str();
}

void RegisterFunctions() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("tvm.rpc.server.workpath",
           [](ffi::String name) -> ffi::String { return g_workdir + "/" + std::string(name); })
      .def("tvm.rpc.server.load_module",
           [](ffi::String name) -> ffi::Module {
             return ffi::Module::LoadFromFile(g_workdir + "/" + std::string(name));
           })
      .def("fluidml.rpc.board_info", []() -> ffi::String { return BoardInfo(); });
}

struct Options {
  std::string host = "0.0.0.0";
  int port = 9090, port_end = 9199;
  std::string tracker_host, key, custom_addr;
  int tracker_port = 0;
};

class Server {
 public:
  explicit Server(Options opt) : opt_(std::move(opt)) {}

  void Run() {
    Bind();
    std::cerr << "board_server: listening on " << opt_.host << ":" << port_
              << (opt_.tracker_port ? ", key " + opt_.key : std::string()) << std::endl;
    while (true) {
      try {
        if (opt_.tracker_port && tracker_ < 0) RegisterWithTracker();
        int conn = -1;
        double timeout = 0;
        if (!Accept(&conn, &timeout)) continue;
        Serve(conn, timeout);
      } catch (const SocketError& err) {  // the tracker went away: register again
        if (tracker_ >= 0) close(tracker_);
        tracker_ = -1;
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  }

 private:
  void Bind() {
    listen_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    if (inet_pton(AF_INET, opt_.host.c_str(), &addr.sin_addr) != 1) Fail("bad --host " + opt_.host);
    for (int p = opt_.port; p < opt_.port_end; ++p) {
      addr.sin_port = htons(static_cast<uint16_t>(p));
      if (bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
        port_ = p;
        break;
      }
    }
    if (!port_) Fail("cannot bind to any port in [" + std::to_string(opt_.port) + ", " +
                     std::to_string(opt_.port_end) + ")");
    listen(listen_, 1);
  }

  void RegisterWithTracker() {
    int fd = Connect(opt_.tracker_host, opt_.tracker_port);
    if (fd < 0) throw SocketError("cannot reach the tracker");
    tracker_ = fd;
    SendInt(fd, kTrackerMagic);
    if (RecvInt(fd) != kTrackerMagic) Fail("the tracker answered with the wrong magic");
    std::string addr = opt_.custom_addr.empty() ? "null" : Quote(opt_.custom_addr);
    SendJSON(fd, "[" + std::to_string(kUpdateInfo) + ", {\"key\": " + Quote("server:" + opt_.key) +
                     ", \"addr\": [" + addr + ", " + std::to_string(port_) + "]}]");
    if (RecvJSON(fd) != "0") Fail("the tracker refused UPDATE_INFO");
    matchkey_.clear();
  }

  void Put() {
    matchkey_ = RandomKey(opt_.key);
    std::string addr = opt_.custom_addr.empty() ? "null" : Quote(opt_.custom_addr);
    SendJSON(tracker_, "[" + std::to_string(kPut) + ", " + Quote(opt_.key) + ", [" +
                           std::to_string(port_) + ", " + Quote(matchkey_) + "], " + addr + "]");
    if (RecvJSON(tracker_) != "0") throw SocketError("the tracker refused PUT");
  }

  // Waits for a client with the right key; false when a connection was refused.
  bool Accept(int* conn, double* timeout) {
    if (tracker_ >= 0 && matchkey_.empty()) Put();
    std::string expect = "client:" + (tracker_ >= 0 ? matchkey_ : opt_.key);
    int unmatched = 0;
    while (true) {
      pollfd p{listen_, POLLIN, 0};
      int ready = poll(&p, 1, 2000);
      if (ready > 0) break;
      if (tracker_ < 0) continue;
      SendJSON(tracker_, "[" + std::to_string(kGetPendingMatchkeys) + "]");
      std::string pending = RecvJSON(tracker_);
      // A client took the key but did not come within ~6 s: offer a new one.
      unmatched = pending.find(Quote(matchkey_)) == std::string::npos ? unmatched + 1 : 0;
      if (unmatched * 2 > 6) {
        Put();
        expect = "client:" + matchkey_;
        unmatched = 0;
      }
    }
    int fd = accept(listen_, nullptr, nullptr);
    if (fd < 0) return false;
    timeval handshake{10, 0};  // a client that connects and says nothing must not stall us
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &handshake, sizeof(handshake));
    try {
      if (RecvInt(fd) != kRPCMagic) throw SocketError("not an RPC client");
      int32_t n = RecvInt(fd);
      if (n < 0 || n > 4096) throw SocketError("bad key length");
      std::string key(static_cast<size_t>(n), '\0');
      RecvAll(fd, key.data(), key.size());
      std::istringstream words(key);
      std::string head, word;
      words >> head;
      if (head != expect) {
        SendInt(fd, kCodeMismatch);
        close(fd);
        return false;
      }
      *timeout = 0;
      while (words >> word) {
        if (word.rfind("-timeout=", 0) == 0) *timeout = std::atof(word.c_str() + 9);
      }
      timeval none{0, 0};  // the session itself waits as long as the client needs
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
      std::string server_key = "server:" + opt_.key;
      SendInt(fd, kCodeSuccess);
      SendInt(fd, static_cast<int32_t>(server_key.size()));
      SendAll(fd, server_key.data(), server_key.size());
    } catch (const SocketError&) {
      close(fd);
      return false;
    }
    *conn = fd;
    matchkey_.clear();  // the next session gets a fresh key (PUT again)
    return true;
  }

  void Serve(int conn, double timeout) {
    char tmpl[] = "/tmp/board_server.XXXXXX";
    if (!mkdtemp(tmpl)) Fail("cannot make a work directory");
    std::string dir = tmpl;
    pid_t child = fork();
    if (child == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      close(listen_);
      if (tracker_ >= 0) close(tracker_);
      g_workdir = dir;
      if (chdir(dir.c_str()) != 0) _exit(1);
      try {
        ffi::Function::GetGlobalRequired("rpc.ServerLoop")(conn);
      } catch (const std::exception& err) {
        std::cerr << "board_server: session ended: " << err.what() << std::endl;
      }
      _exit(0);
    }
    auto start = std::chrono::steady_clock::now();
    int status = 0;
    while (waitpid(child, &status, WNOHANG) == 0) {
      double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
                           .count();
      if (timeout > 0 && elapsed > timeout) {
        std::ostringstream msg;
        msg << "RPCSessionTimeoutError: Your " << timeout << "s session has expired, try to "
            << "increase the \"session_timeout\" value.";
        try {
          ffi::Function::GetGlobalRequired("rpc.ReturnException")(conn, msg.str());
        } catch (const std::exception&) {
        }
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    close(conn);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  Options opt_;
  int listen_ = -1, tracker_ = -1, port_ = 0;
  std::string matchkey_;
};

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--host") {
      opt.host = next();
    } else if (arg == "--port") {
      opt.port = std::stoi(next());
    } else if (arg == "--port-end") {
      opt.port_end = std::stoi(next());
    } else if (arg == "--tracker") {
      std::string t = next();
      size_t colon = t.rfind(':');
      if (colon == std::string::npos) Fail("--tracker wants HOST:PORT, got " + t);
      opt.tracker_host = t.substr(0, colon);
      opt.tracker_port = std::stoi(t.substr(colon + 1));
    } else if (arg == "--key") {
      opt.key = next();
    } else if (arg == "--custom-addr") {
      opt.custom_addr = next();
    } else if (arg == "--threads") {
      g_num_threads = next();
      setenv("TVM_NUM_THREADS", g_num_threads.c_str(), 1);
    } else {
      Fail("unknown argument " + arg +
           " (usage: board_server [--host H] [--port P] [--port-end E] [--tracker H:P --key K] "
           "[--custom-addr A] [--threads N])");
    }
  }
  if (opt.tracker_port && opt.key.empty()) Fail("--tracker needs --key");
  if (const char* n = std::getenv("TVM_NUM_THREADS")) g_num_threads = n;
  signal(SIGPIPE, SIG_IGN);
  RegisterFunctions();
  Server(opt).Run();
  return 0;
}
