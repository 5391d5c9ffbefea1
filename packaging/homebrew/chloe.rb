# Homebrew formula for Chloe, the realtime web server: chloed and its Python
# dependencies in a virtualenv under libexec, built from source as Homebrew
# builds every resource; /usr/local/etc/chloe/chloe.toml (or
# /opt/homebrew/etc/...) as the config; a `brew services` service running
# twistd in the foreground. `chloed [options]` is
# `twistd --nodaemon --pidfile= chloe [options]`.
#
# Not in homebrew-core, and not tried: no brew runs where this is written
# (Debian CI checks its syntax with `ruby -c`, and that its resources match
# packaging/homebrew/requirements.txt). Use it from a tap:
#     brew tap-new you/chloe && cp chloe.rb "$(brew --repository you/chloe)/Formula/"
#     brew install --build-from-source you/chloe/chloe
# The url and sha256 below name the sdist on PyPI under the name "chloed",
# which is free there ("chloe" is taken); nothing is published yet, so fill
# the sha256 in when it is (`shasum -a 256 dist/chloed-*.tar.gz`).
# Resources: packaging/homebrew/update-resources regenerates them.
class Chloe < Formula
  include Language::Python::Virtualenv

  desc "Realtime web server for applications that speak only HTTP POST"
  homepage "https://h-seed-a6137ae9.example/chloe"
  url "https://files.pythonhosted.org/packages/source/c/chloed/chloed-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "MIT"

  # cryptography builds with Rust and links OpenSSL; cffi needs libffi.
  depends_on "rust" => :build
  depends_on "openssl@3"
  depends_on "python@3.12"
  uses_from_macos "libffi"

  # resources: begin (packaging/homebrew/update-resources writes these)
  resource "attrs" do
    url "https://files.pythonhosted.org/packages/9a/8e/82a0fe20a541c03148528be8cac2408564a6c9a0cc7e9171802bc1d26985/attrs-26.1.0.tar.gz"
    sha256 "d03ceb89cb322a8fd706d4fb91940737b6642aa36998fe130a9bc96c985eff32"
  end

  resource "autobahn" do
    url "https://files.pythonhosted.org/packages/08/15/694ed91f8f28d8c74b424a8a80208d4f221c12ae5d2fbee4d5041cdf1d0d/autobahn-26.11.1.tar.gz"
    sha256 "1a081ca27ad5a0a04d3c7ca07b2caa6d324b8004383e36ae6eede1d5053e23b0"
  end

  resource "automat" do
    url "https://files.pythonhosted.org/packages/e3/0f/d40bbe294bbf004d436a8bcbcfaadca8b5140d39ad0ad3d73d1a8ba15f14/automat-25.4.16.tar.gz"
    sha256 "0017591a5477066e90d26b0e696ddc143baafd87b588cfac8100bc6be9634de0"
  end

  resource "cbor2" do
    url "https://files.pythonhosted.org/packages/df/61/be007e3421969a4a318b486e4eaf4205872bbc1baf063ea7e679f74015cf/cbor2-6.3.0.tar.gz"
    sha256 "fd4d6b3533e966eec3fb33ce0f17e925fc09b512500ab7770867ebec7d7d5dc1"
  end

  resource "cffi" do
    url "https://files.pythonhosted.org/packages/9e/ef/008a1939e372c06329a3fce4279c02f328488f3526744906eeec3da7ad5f/cffi-2.1.1.tar.gz"
    sha256 "dd31f52ea1086513bb9df30f8fcee9b8918323ae067a3d5b78bc826a000712be"
  end

  resource "constantly" do
    url "https://files.pythonhosted.org/packages/4d/6f/cb2a94494ff74aa9528a36c5b1422756330a75a8367bf20bd63171fc324d/constantly-23.10.4.tar.gz"
    sha256 "aa92b70a33e2ac0bb33cd745eb61776594dc48764b06c35e0efd050b7f1c7cbd"
  end

  resource "cryptography" do
    url "https://files.pythonhosted.org/packages/9d/af/182eb91b0df3fe75c4d9f26fe70684569566745f6ba7e5c9c73a862c5252/cryptography-50.0.2.tar.gz"
    sha256 "7b46165bb56eb4704e2eaaf86f3c940d19154535d9b0ca7d6d590b04060e00d5"
  end

  resource "httptools" do
    url "https://files.pythonhosted.org/packages/3a/ec/deed52912ab7ca6c0b12859330c571c60c61d7267b341b28951fcbf13694/httptools-0.9.0.tar.gz"
    sha256 "d484ebb7e3a3f3597b0f645fbd1b85633674ca808c1f5ba11c2caf7c66f5c8b6"
  end

  resource "hyperlink" do
    url "https://files.pythonhosted.org/packages/3a/51/1947bd81d75af87e3bb9e34593a4cf118115a8feb451ce7a69044ef1412e/hyperlink-21.0.0.tar.gz"
    sha256 "427af957daa58bc909471c6c40f74c5450fa123dd093fc53efd2e91d2705a56b"
  end

  resource "idna" do
    url "https://files.pythonhosted.org/packages/f5/08/8eea9d4b8302028f3abb2c0813953f7aec26d33b7a8960ed760e65ff29fa/idna-3.20.tar.gz"
    sha256 "a7db850025b95ded1eae8a46181a1a6c56c92c96f0e2b005d9ff8dc0210cab44"
  end

  resource "incremental" do
    url "https://files.pythonhosted.org/packages/ef/3c/82e84109e02c492f382c711c58a3dd91badda6d746def81a1465f74dc9f5/incremental-24.11.0.tar.gz"
    sha256 "87d3480dbb083c1d736222511a8cf380012a8176c2456d01ef483242abbbcf8c"
  end

  resource "klein" do
    url "https://files.pythonhosted.org/packages/32/55/70e08b134db00f2e9b5c00f6df6e4f1c13b46041b15451e8f3c28bd74908/klein-24.8.0.tar.gz"
    sha256 "1eef4f583c4f8ef4fc57d8b57753fe6e8935501eb36497bb574064e80e3d0b15"
  end

  resource "markupsafe" do
    url "https://files.pythonhosted.org/packages/38/9b/e422a865e1d5d57d0e509b4e0bf1c1a70a7f6382c29a5aa428df994c8bc8/markupsafe-3.0.4.tar.gz"
    sha256 "2e9ad7dd851bf45fab9f75cbff4cb493fee9979e8d8c7c9c3ee119022518edd6"
  end

  resource "msgpack" do
    url "https://files.pythonhosted.org/packages/cc/52/1ec7ead2c7528bf3d1db73e886fa4df10f9e6f0eb7854a448b7090cfcef7/msgpack-1.2.4.tar.gz"
    sha256 "475c44e12f2a5de766a8448783f149c9b33f3f49b88953c6cd739a77d93c732c"
  end

  resource "multipart" do
    url "https://files.pythonhosted.org/packages/a5/d5/440ca1e07162d93b6645942e36e8721d2e54ff28d265abec73a6339a6c59/multipart-2.0.1.tar.gz"
    sha256 "5dfea7ce4260e10a9e620369449e7d41c269a94e192db9ea4af1a0059cddd370"
  end

  resource "packaging" do
    url "https://files.pythonhosted.org/packages/c3/75/ffb1dc0ed12352139fb4ca0e3fde4325a23e3d0f3f40efe89717bc4f557b/packaging-26.4.tar.gz"
    sha256 "c4b671c41ddb9bf26e543c37723610d28fb6bf7affc4da17cf048d419d2c062a"
  end

  resource "prometheus-client" do
    url "https://files.pythonhosted.org/packages/52/73/f1334c29c2af4cd9dba6c7817e61b611bd0215e2eb5565c6064a4de18802/prometheus_client-0.26.0.tar.gz"
    sha256 "04a91bcf94e2cf74a44a1a874d651a2e853ed354b6e822f3b7487751465d5c2b"
  end

  resource "pycparser" do
    url "https://files.pythonhosted.org/packages/cb/27/eeb9f307bf07060f3d9f9aa0fb8c15b01bdfded0a941e4b2719c7f94cacd/pycparser-3.12.tar.gz"
    sha256 "f03387877eab82ce01bbdfd0ba7252ee55a90b1c708d5129e2ce915475cf1db6"
  end

  resource "pyjwt" do
    url "https://files.pythonhosted.org/packages/43/ea/5194e52748b0da83d71e082d75496eaec6e58f419f5e184786ded517e6a9/pyjwt-2.15.1.tar.gz"
    sha256 "4f259e80cdfb6b3fc18a7de51fd1ef9ec79652f25019bae68975ca2468a34df8"
  end

  resource "pyopenssl" do
    url "https://files.pythonhosted.org/packages/3f/e8/7325d258199b159eb2c03fe32107533e2832e70e63f4fb88a6aa00023201/pyopenssl-26.4.0.tar.gz"
    sha256 "28dfcce0162b9211413e26dfbfdf1d24317fbeba18fc93c12400a1856b2a0bc7"
  end

  resource "service-identity" do
    url "https://files.pythonhosted.org/packages/61/87/ad52e2c582c0f0e7f0a1b86950494c38d67422dc0f5ed9044a5fb9569a49/service_identity-26.1.0.tar.gz"
    sha256 "6358c52882c96e66ac4a55eb3a72c7dd4a70763f8cc6fa4e70abde2656f4bf3b"
  end

  resource "six" do
    url "https://files.pythonhosted.org/packages/94/e7/b2c673351809dca68a0e064b6af791aa332cf192da575fd474ed7d6f16a2/six-1.17.0.tar.gz"
    sha256 "ff70335d468e7eb6ec65b95b99d3a2836546063f63acc5171de367e834932a81"
  end

  resource "treq" do
    url "https://files.pythonhosted.org/packages/92/13/96aceb81d076eea518bf174048db701ac8b139c7aed1082913318a55a7d2/treq-26.7.0.tar.gz"
    sha256 "43e728e12aca2d897c626cf07dc7b4392749b73de050a7d66e086cb3a6e15da9"
  end

  resource "tubes" do
    url "https://files.pythonhosted.org/packages/11/99/7ffc9be5b3917cc91f388e5f74def363534d6537610bb1baec1a966b8cac/Tubes-0.2.1.tar.gz"
    sha256 "59b9197f2fa6f7fc6bc3281de55797adc729bb75c9c613b4f6d6c41599f0d78b"
  end

  resource "twisted" do
    url "https://files.pythonhosted.org/packages/fe/31/a5f99ae7f1550914b0702b8f78118d95a79da20525d26fbc1b2ab42bc8ae/twisted-26.10.0.tar.gz"
    sha256 "5f0355403e507fc23ceea85e9dbb4bc59335aabde41dd324e8b8cea180dd38de"
  end

  resource "txaio" do
    url "https://files.pythonhosted.org/packages/49/de/52729cab9d2c8de679ad015e87f11f69e092d6fb3084eb9a39735df09ce7/txaio-26.6.1.tar.gz"
    sha256 "3ee900b2331c93457530fddbccc1a320c4e2d7ac8f9073d01c3fbe87762ccb35"
  end

  resource "txredisapi" do
    url "https://files.pythonhosted.org/packages/01/3e/fec7b8293358d69a4e418647d3d562faef6e4e359c52191b2a4fa6281b23/txredisapi-1.6.0.tar.gz"
    sha256 "220059815289902c86f764a0b19cc03f1a903efaa4a3568f06297ffa0908a9d9"
  end

  resource "typing-extensions" do
    url "https://files.pythonhosted.org/packages/f6/cc/6253133b5bb138fc3306cebfbda2c520f545d36b5be2c7255cc528bb45d6/typing_extensions-4.16.0.tar.gz"
    sha256 "dc983d19a509c94dba722ee6abd33940f7c05a89e243c47e907eb4db6f1a43e5"
  end

  resource "ujson" do
    url "https://files.pythonhosted.org/packages/e0/60/ad782f70ce03d12ec23288292a17549ca537f9d188227340ac0d082421b3/ujson-6.1.0.tar.gz"
    sha256 "aef7ea4cd9e2e9f8a35c4538a9780d58c80d76c5da66a8dad269b4cc6d930c29"
  end

  resource "werkzeug" do
    url "https://files.pythonhosted.org/packages/a4/34/4dd12fc8bb7d61c91467ec3efe415ffa7d5456f799954b40c5bbaeae470e/werkzeug-3.1.9.tar.gz"
    sha256 "55ca7c70a75689be937aa27f8ff4b018f06ff4838fc73045560bf0f5a1291060"
  end

  resource "zope-interface" do
    url "https://files.pythonhosted.org/packages/de/ff/a1f0021a26033da0df223fd05a7455d6d2881b67daf2c6dc897b4fe0a427/zope_interface-8.7.tar.gz"
    sha256 "0b47b62e8d0d99b24bcdd32f4f2120425e5019c3bee2ad69a0e1d75737487a96"
  end
  # resources: end

  def install
    virtualenv_install_with_resources
    # twistd is Twisted's script, not chloe's: not linked into bin (it is
    # also a name other formulas may use). chloed runs it with the plugin.
    (bin/"chloed").write <<~SH
      #!/bin/sh
      exec "#{opt_libexec}/bin/twistd" --nodaemon --pidfile= chloe "$@"
    SH
    # The config: conf/chloe.toml (in the sdist) on loopback, its relay
    # spool in var. Homebrew keeps an edited etc file across upgrades.
    config = File.read("conf/chloe.toml")
                 .sub(/^listen = .*$/, 'listen = "tcp:8901:interface=127.0.0.1"')
                 .sub(/^# relay_spool = .*$/, 'relay_spool = "disk"')
                 .sub(/^# relay_spool_path = .*$/, "relay_spool_path = \"#{var}/chloe/spool\"")
    (buildpath/"chloe.toml").write config
    (etc/"chloe").install "chloe.toml" unless (etc/"chloe/chloe.toml").exist?
    (var/"chloe").mkpath
  end

  def caveats
    <<~EOS
      The config is #{etc}/chloe/chloe.toml: it listens on 127.0.0.1:8901.
      Set secret and application_server_url there, then
        brew services restart chloe
    EOS
  end

  service do
    run [opt_libexec/"bin/twistd", "--nodaemon", "--pidfile=", "chloe", "--config", etc/"chloe/chloe.toml"]
    keep_alive true
    working_dir var/"chloe"
    environment_variables PYTHONUNBUFFERED: "1"
    log_path var/"log/chloe.log"
    error_log_path var/"log/chloe.log"
  end

  test do
    port = free_port
    pid = spawn bin/"chloed", "--listen", "tcp:#{port}:interface=127.0.0.1"
    begin
      health = ""
      60.times do
        health = shell_output("curl -s http://127.0.0.1:#{port}/health 2>&1", nil)
        break if health.include?('"ok"')

        sleep 1
      end
      assert_match '"ok"', health
    ensure
      Process.kill("TERM", pid)
      Process.wait(pid)
    end
  end
end
