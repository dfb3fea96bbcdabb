import ArgumentParser
import Foundation
import PPCommandLine
import PPCore
import PPRuntime

/// `ppnode secret`: says where the cluster secret lives, prints it, or installs one
/// copied from another machine.
struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Show where the cluster secret is, print it, or install a copied one.",
        discussion: """
            The secret is the file ppnode uses: --secret-file, else the config file's \
            secret-file, else $PP_SECRET_FILE, else ~/.config/ppnode/secret ($PP_SECRET \
            counts for --show). Every client and node of a cluster needs the same one.

            Examples:
              ppnode secret                                   # where it is, its key id
              ppnode secret --show | ssh other-host ppnode secret --install -
              sudo -H -u ppnode ppnode secret --install /tmp/copied-secret
            """
    )

    @Flag(help: "Print the secret itself on standard output (keep it private).")
    var show = false

    @Option(help: ArgumentHelp("Install the secret in FILE (- reads standard input) as this machine's secret file, mode 0600.", valueName: "FILE"))
    var install: String?

    @Flag(help: "With --install: replace a different secret already installed.")
    var force = false

    @Option(help: ArgumentHelp("Config file whose secret-file counts.", valueName: "PATH"))
    var config: String?

    @OptionGroup var secretOptions: SecretOptions

    func validate() throws {
        if self.show, self.install != nil { throw ValidationError("--show and --install contradict each other; give one") }
        if self.force, self.install == nil { throw ValidationError("--force only goes with --install FILE") }
    }

    func run() throws {
        var file = self.secretOptions.secretFile, origin = "--secret-file"
        let (configPath, settings) = try Settings.configFile(self.config)
        if file == nil, let line = settings["secret-file"] {
            (file, origin) = (line.value, "\(configPath!):\(line.line) (secret-file)")
        }
        do {
            if let source = self.install {
                let target = file ?? ProcessInfo.processInfo.environment["PP_SECRET_FILE"].flatMap { $0.isEmpty ? nil : $0 } ?? ClusterSecret.defaultFile
                let data = source == "-" ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: source)
                guard let data else { throw ValidationError("cannot read \(source): \(String(cString: strerror(errno))); give the file that holds the copied secret, or - for standard input") }
                let (secret, changed) = try ClusterSecret.install(String(decoding: data, as: UTF8.self), origin: source, at: target, replace: self.force)
                print("\(changed ? "installed the secret in" : "the secret is already installed in") \(target) (key id \(secret.keyID)); restart ppnode to use it")
                return
            }
            let secret = try ClusterSecret.load(file: file, origin: origin, create: false).secret
            if self.show {
                FileHandle.standardError.write(Data("ppnode: the cluster secret from \(secret.origin) (key id \(secret.keyID)); keep it private\n".utf8))
                print(String(decoding: secret.bytes, as: UTF8.self))
            } else {
                print("secret: \(secret.origin)\nkey id: \(secret.keyID)\ncopy it to another machine: ppnode secret --show | ssh HOST ppnode secret --install -")
            }
        } catch let error as SecretError {
            FileHandle.standardError.write(Data("ppnode secret: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}
