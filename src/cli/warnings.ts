/**
 * grpc-js passes the target host as the TLS server name, an IP address for `--endpoint 127.0.0.1:7401`,
 * and Node warns about that on stderr (DEP0123) on every TLS run of the ctl, where scripts read errors.
 * The certificate is still checked against the IP (its SAN); only the SNI extension is left out. Every
 * other warning is printed as before.
 */
export function quietIpServernameWarning(): void {
  const emit = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((...args: unknown[]): void => {
    const [, typeOrOptions, code] = args;
    const warningCode = typeof typeOrOptions === 'object' && typeOrOptions !== null ? (typeOrOptions as { code?: unknown }).code : code;
    if (warningCode === 'DEP0123') return;
    emit(...args);
  }) as typeof process.emitWarning;
}
