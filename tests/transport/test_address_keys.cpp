// Addresses ("host:port", "[v6]:port"), listening and connecting errors, cluster key files.
#include "transport_test_util.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

namespace hearth::transport::test {
namespace {

std::string parse_error(std::string_view text) {
  try {
    parse_host_port(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "accepted";
}

TEST(Address, ParsesHostPortAndBracketedV6) {
  HostPort a = parse_host_port("127.0.0.1:5000");
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 5000);
  a = parse_host_port("node-2.lan:65535");
  EXPECT_EQ(a.host, "node-2.lan");
  EXPECT_EQ(a.port, 65535);
  a = parse_host_port("[::1]:0");
  EXPECT_EQ(a.host, "::1");
  EXPECT_EQ(a.port, 0);
  a = parse_host_port("[fe80::1%eth0]:7");
  EXPECT_EQ(a.host, "fe80::1%eth0");
  EXPECT_EQ(format_host_port(a), "[fe80::1%eth0]:7");
  EXPECT_EQ(format_host_port({"10.0.0.1", 80}), "10.0.0.1:80");
}

TEST(Address, ClearErrors) {
  EXPECT_NE(parse_error("").find("empty"), std::string::npos);
  EXPECT_NE(parse_error("localhost").find("missing ':port'"), std::string::npos);
  EXPECT_NE(parse_error("localhost:").find("empty port"), std::string::npos);
  EXPECT_NE(parse_error(":80").find("empty host"), std::string::npos);
  EXPECT_NE(parse_error("host:http").find("not a number"), std::string::npos);
  EXPECT_NE(parse_error("host:65536").find("not a number from 0 to 65535"), std::string::npos);
  EXPECT_NE(parse_error("host:-1").find("not a number"), std::string::npos);
  EXPECT_NE(parse_error("::1:80").find("needs brackets"), std::string::npos);
  EXPECT_NE(parse_error("[::1:80").find("missing ']'"), std::string::npos);
  EXPECT_NE(parse_error("[::1]80").find("missing ':port'"), std::string::npos);
  EXPECT_NE(parse_error("[]:80").find("empty host"), std::string::npos);
}

TEST(Tcp, ListenerBindsLoopbackByDefaultAndReportsThePort) {
  TcpListener listener(test_limits());
  EXPECT_GT(listener.port(), 0);
  EXPECT_EQ(listener.address(), fmt::format("127.0.0.1:{}", listener.port()));
}

TEST(Tcp, AcceptTimesOutAndCloseWakesIt) {
  TcpListener listener(test_limits());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(listener.accept(Timeout(50)), nullptr);
  EXPECT_GE(seconds_since(t0), 0.045);
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    listener.close();
  });
  EXPECT_EQ(listener.accept(kNoTimeout), nullptr);
  closer.join();
}

TEST(Tcp, ConnectionRefusedIsClear) {
  uint16_t port;
  {
    TcpListener listener(test_limits());
    port = listener.port();
  }
  try {
    tcp_connect("127.0.0.1", port, Timeout(5000), test_limits());
    FAIL() << "nothing listens on " << port;
  } catch (const LinkError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(fmt::format("cannot connect to 127.0.0.1:{}", port)), std::string::npos) << what;
    EXPECT_NE(what.find("refused"), std::string::npos) << what;
  }
  EXPECT_THROW(tcp_connect("no-such-host.invalid", 80, Timeout(5000), test_limits()), LinkError);
  EXPECT_THROW(tcp_connect("127.0.0.1:0", Timeout(100), test_limits()), LinkError);
}

TEST(Tcp, Ipv6Loopback) {
  std::unique_ptr<TcpListener> listener;
  try {
    listener = std::make_unique<TcpListener>(test_limits(), "::1", 0);
  } catch (const LinkError& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  EXPECT_EQ(listener->address(), fmt::format("[::1]:{}", listener->port()));
  auto client = tcp_connect(fmt::format("[::1]:{}", listener->port()), Timeout(5000), test_limits());
  auto server = listener->accept(Timeout(5000));
  ASSERT_TRUE(server);
  EXPECT_EQ(client->peer(), fmt::format("[::1]:{}", listener->port()));
  client->send(kSmall, as_bytes("v6"), Timeout(5000));
  ByteBuffer buffer;
  auto m = server->receive(buffer, Timeout(5000));
  ASSERT_TRUE(m);
  EXPECT_EQ(as_string(m->payload), "v6");
}

class KeyFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           fmt::format("hearth-keys-{}-{}", ::getpid(), ::testing::UnitTest::GetInstance()->random_seed());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path write(const std::string& name, const std::string& content) {
    const auto path = dir_ / name;
    std::ofstream(path, std::ios::binary) << content;
    std::filesystem::permissions(path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    return path;
  }
  std::string load_error(const std::filesystem::path& path) {
    try {
      load_cluster_key(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "accepted";
  }
  std::filesystem::path dir_;
};

TEST_F(KeyFiles, GenerateWriteLoadRoundTripWithMode0600) {
  const ClusterKey key = generate_cluster_key();
  EXPECT_EQ(key.bytes().size(), 32u);
  EXPECT_NE(key.to_hex(), generate_cluster_key().to_hex());
  const auto path = dir_ / "cluster.key";
  write_cluster_key(path, key);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const ClusterKey loaded = load_cluster_key(path);
  EXPECT_EQ(loaded.to_hex(), key.to_hex());
  EXPECT_NE(load_error(path).find("accepted"), std::string::npos);
  try {
    write_cluster_key(path, key);
    FAIL() << "an existing key file must not be overwritten";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("refusing to overwrite"), std::string::npos);
  }
}

TEST_F(KeyFiles, HexWithOrWithoutNewline) {
  const std::string hex(32, 'A');
  EXPECT_EQ(load_cluster_key(write("plain", hex)).to_hex(), std::string(32, 'a'));
  EXPECT_EQ(load_cluster_key(write("lf", hex + "\n")).bytes().size(), 16u);
  EXPECT_EQ(load_cluster_key(write("crlf", hex + "\r\n")).bytes().size(), 16u);
}

TEST_F(KeyFiles, BadKeysAreRefusedWithTheReason) {
  EXPECT_NE(load_error(dir_ / "missing").find("cannot read cluster key file"), std::string::npos);
  EXPECT_NE(load_error(write("empty", "")).find("is empty"), std::string::npos);
  EXPECT_NE(load_error(write("newline", "\n")).find("is empty"), std::string::npos);
  EXPECT_NE(load_error(write("short", std::string(30, 'a'))).find("15 bytes; at least 16"), std::string::npos);
  EXPECT_NE(load_error(write("odd", std::string(33, 'a'))).find("odd number"), std::string::npos);
  EXPECT_NE(load_error(write("raw", std::string(32, '\x01'))).find("not hex text: byte 0 is 0x01"), std::string::npos);
  EXPECT_NE(load_error(write("spaces", std::string(32, 'a') + " \n")).find("not hex text"), std::string::npos);
  EXPECT_NE(load_error(write("two-newlines", std::string(32, 'a') + "\n\n")).find("not hex text"), std::string::npos);
  EXPECT_THROW(ClusterKey(std::vector<std::byte>(15)), Error);
}

}  // namespace
}  // namespace hearth::transport::test
